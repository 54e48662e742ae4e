"""Failures the pipeline reports, each tied to the one gRPC status code the servicer maps it to.

No grpc here: the code is a name of grpc.StatusCode, so the pipeline stays testable without a server.
"""


class DetectError(Exception):
    """A request that cannot be answered; `code` names the grpc.StatusCode, the message says what to fix."""

    code = "INTERNAL"


class InvalidArgument(DetectError):
    code = "INVALID_ARGUMENT"


class ResourceExhausted(DetectError):
    code = "RESOURCE_EXHAUSTED"


class AlreadyExists(DetectError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(DetectError):
    code = "FAILED_PRECONDITION"


class Unavailable(DetectError):
    code = "UNAVAILABLE"


class PermissionDenied(DetectError):
    code = "PERMISSION_DENIED"
