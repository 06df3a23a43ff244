"""The platform team's policy: typed model, loading with line:column errors, compilation."""

from extender.policy.loader import (
    EMBEDDED_NAME,
    LoadedPolicy,
    PolicyError,
    compile_rules,
    embedded_default,
    load_file,
    load_text,
)
from extender.policy.model import API_VERSION, KIND, PolicyDocument, parse_duration

__all__ = [
    "API_VERSION",
    "EMBEDDED_NAME",
    "KIND",
    "LoadedPolicy",
    "PolicyDocument",
    "PolicyError",
    "compile_rules",
    "embedded_default",
    "load_file",
    "load_text",
    "parse_duration",
]
