"""The runtime's error types: one base class, a subclass per kind of failure."""


class NeoEdgeError(Exception):
    """Base class of every error neo_edge_runtime raises on purpose."""


class TargetError(NeoEdgeError, ValueError):
    """A target name, platform, framework or compiler option that is not supported."""


class CompileError(NeoEdgeError):
    """A model that cannot be read or compiled."""


class ArtifactError(NeoEdgeError):
    """An artifact folder that is missing, incomplete, tampered with, or of the wrong kind."""


class SignatureError(ArtifactError):
    """An artifact whose signature is missing or does not verify with the configured public
    key, or a public key that cannot be used to verify one."""


class InputError(NeoEdgeError, ValueError):
    """Inputs to ``predict`` whose names, shapes or dtypes do not match the model."""
