"""The kube-scheduler extender wire contract (ExtenderArgs in, filter and priority results out)."""

from extender.wire.codec import (
    FilterArgs,
    HostPriority,
    WireError,
    decode_args,
    decode_pod,
    encode_error,
    encode_filter,
    encode_filter_pass_all,
    encode_filter_result,
    encode_priorities,
    remember_names,
)
from extender.wire.preempt import PreemptArgs, VictimLookup, decode_preempt, encode_preempt

__all__ = [
    "FilterArgs",
    "HostPriority",
    "PreemptArgs",
    "VictimLookup",
    "WireError",
    "decode_args",
    "decode_pod",
    "decode_preempt",
    "encode_error",
    "encode_filter",
    "encode_filter_pass_all",
    "encode_filter_result",
    "encode_preempt",
    "encode_priorities",
    "remember_names",
]
