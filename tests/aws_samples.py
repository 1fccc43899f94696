"""Events as AWS documents them, for the tests of what reacts to them.

Each is the sample of the page named above it, with example values replaced where a test
needs its own (bucket names, keys, deployment ids). A field name typed from memory is how
a rule that never fires gets shipped: patterns and handlers are tested against these.
"""

# The two events as AWS documents them, with the example values replaced where a test needs
# its own: "Get deployment and component health status notifications", AWS IoT Greengrass V2
# developer guide (greengrass/v2/developerguide/deployment-health-notifications.html),
# "Deployment status change event" and "Component status change event".
DEPLOYMENT_STATUS_EVENT = {
    "version": "0", "id": "cd4d811e-ab12-322b-8255-EXAMPLEb1bc8",
    "detail-type": "Greengrass V2 Effective Deployment Status Change",
    "source": "aws.greengrass", "account": "123456789012", "region": "us-west-2",
    "time": "2018-03-22T00:38:11Z",
    "resources": ["arn:aws:greengrass:us-east-1:123456789012:coreDevices:MyGreengrassCore"],
    "detail": {
        "deploymentId": "dep-123",
        "coreDeviceExecutionStatus": "FAILED",
        "statusDetails": {
            "errorStack": ["DEPLOYMENT_FAILURE", "ARTIFACT_DOWNLOAD_ERROR", "S3_ERROR",
                           "S3_ACCESS_DENIED", "S3_HEAD_OBJECT_ACCESS_DENIED"],
            "errorTypes": ["DEPENDENCY_ERROR", "PERMISSION_ERROR"]},
        "reason": "Error occurred while processing deployment"},
}
COMPONENT_STATUS_EVENT = {
    "version": "0", "id": "cd4d811e-ab12-322b-8255-EXAMPLEb1bc8",
    "detail-type": "Greengrass V2 Installed Component Status Change",
    "source": "aws.greengrass", "account": "123456789012", "region": "us-west-2",
    "time": "2018-03-22T00:38:11Z",
    "resources": ["arn:aws:greengrass:us-east-1:123456789012:coreDevices:MyGreengrassCore"],
    "detail": {"components": [{
        "componentName": "MyComponent", "componentVersion": "1.0.0", "root": True,
        "lifecycleState": "BROKEN", "lifecycleStatusCodes": ["STARTUP_ERROR"],
        "lifecycleStateDetails": "An error occurred during startup. The startup script exited "
                                 "with code 1."}]},
}


# S3's "Object Created" event as AWS documents it (Step Functions developer guide, "Start a
# state machine execution in response to Amazon S3 events", example of execution input),
# with the bucket and key replaced by the test's.
OBJECT_CREATED_EVENT = {
    "version": "0", "id": "6c540ad4-0671-9974-6511-756fbd7771c3",
    "detail-type": "Object Created", "source": "aws.s3", "account": "123456789012",
    "time": "2022-02-19T01:36:58Z", "region": "us-east-1",
    "resources": ["arn:aws:s3:::models-bucket"],
    "detail": {
        "version": "0", "bucket": {"name": "models-bucket"},
        "object": {"key": "datasets/train/part-0001.csv", "size": 800704,
                   "etag": "f31d8546bb67845b4d3048cde533b937", "sequencer": "00621049BA9A8C712B"},
        "request-id": "79104EXAMPLEB723", "requester": "123456789012",
        "source-ip-address": "203.0.113.34", "reason": "PutObject"},
}
