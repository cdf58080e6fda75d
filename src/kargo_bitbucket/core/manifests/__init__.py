"""Parse YAML manifests and check them the way the API server checks Kargo's CRD schemas.

``reader`` turns text into documents with line numbers, ``schema`` is the small DSL the
checks are written in, ``names`` the Kubernetes name rules, ``kinds`` Kargo's kinds.
"""

from kargo_bitbucket.core.manifests.kinds import (
    ACCEPTED_KINDS,
    API_VERSIONS,
    GIT_FIELDS,
    KARGO_API_VERSION,
    KINDS,
    NAMESPACED,
    Resource,
    canonical_kind,
    validate_object,
)
from kargo_bitbucket.core.manifests.reader import parse_documents
from kargo_bitbucket.core.manifests.schema import (
    ManifestError,
    UnknownFieldError,
    UnknownKindError,
)

__all__ = [
    "ACCEPTED_KINDS",
    "API_VERSIONS",
    "GIT_FIELDS",
    "KARGO_API_VERSION",
    "KINDS",
    "NAMESPACED",
    "ManifestError",
    "Resource",
    "UnknownFieldError",
    "UnknownKindError",
    "canonical_kind",
    "parse_documents",
    "validate_object",
]
