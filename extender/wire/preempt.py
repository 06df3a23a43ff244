"""The preempt verb's contract: ExtenderPreemptionArgs in, ExtenderPreemptionResult out.

kube-scheduler offers candidate nodes with their victims: full victim Pods in
``NodeNameToVictims`` (``nodeCacheCapable: false``) or UIDs in ``NodeNameToMetaVictims``
(``nodeCacheCapable: true``). The reply always uses ``NodeNameToMetaVictims`` (UIDs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from extender.core import (
    Estimation,
    PodInfo,
    PreemptCandidate,
    Victim,
    estimate_pod,
)
from extender.wire.codec import (
    WireError,
    check_candidates,
    decode_envelope,
    decode_pod,
    pod_field,
)


class _MetaPod(msgspec.Struct):
    UID: str = ""
    uid: str = ""


class _MetaVictims(msgspec.Struct):
    Pods: list[_MetaPod] | None = None
    pods: list[_MetaPod] | None = None
    NumPDBViolations: int = 0
    numpdbviolations: int = 0


class _Victims(msgspec.Struct):
    Pods: list[msgspec.Raw] | None = None
    pods: list[msgspec.Raw] | None = None
    NumPDBViolations: int = 0
    numpdbviolations: int = 0


class _PreemptArgs(msgspec.Struct):
    Pod: msgspec.Raw = msgspec.Raw()
    pod: msgspec.Raw = msgspec.Raw()
    NodeNameToVictims: dict[str, _Victims] | None = None
    nodenametovictims: dict[str, _Victims] | None = None
    NodeNameToMetaVictims: dict[str, _MetaVictims] | None = None
    nodenametometavictims: dict[str, _MetaVictims] | None = None


_decoder = msgspec.json.Decoder(_PreemptArgs)

VictimLookup = Callable[[str], tuple[float, float] | None]
"""UID → estimated (cpu cores, memory bytes) of a bound pod, or None when unknown."""


@dataclass(frozen=True, slots=True)
class PreemptArgs:
    pod: PodInfo
    candidates: list[PreemptCandidate]
    unknown_victims: int
    """Victims given by UID that the lookup did not know (their usage is not subtracted)."""


def decode_preempt(body: bytes, estimation: Estimation, lookup: VictimLookup) -> PreemptArgs:
    """Decode ExtenderPreemptionArgs; raise :class:`WireError` naming the problem."""
    args = decode_envelope(body, _decoder, "ExtenderPreemptionArgs")
    pod = pod_field(args.Pod, args.pod, "ExtenderPreemptionArgs")
    full = args.NodeNameToVictims if args.NodeNameToVictims is not None else args.nodenametovictims
    meta = (
        args.NodeNameToMetaVictims
        if args.NodeNameToMetaVictims is not None
        else args.nodenametometavictims
    )
    candidates: list[PreemptCandidate] = []
    unknown = 0
    if full is not None:
        check_candidates(len(full), "NodeNameToVictims")
    if meta is not None:
        check_candidates(len(meta), "NodeNameToMetaVictims")
    if full is not None:
        for node, victims in full.items():
            pods = victims.Pods if victims.Pods is not None else victims.pods
            out = []
            for i, raw in enumerate(pods or ()):
                vpod = decode_pod(raw, f"NodeNameToVictims[{node!r}].Pods[{i}]")
                if not vpod.uid:
                    raise WireError(
                        f"NodeNameToVictims[{node!r}].Pods[{i}]: metadata.uid is missing"
                    )
                cpu, mem = estimate_pod(vpod, estimation)
                out.append(Victim(vpod.uid, cpu, mem))
            pdb = victims.NumPDBViolations or victims.numpdbviolations
            candidates.append(PreemptCandidate(node, tuple(out), pdb))
    elif meta is not None:
        for node, mvictims in meta.items():
            mpods = mvictims.Pods if mvictims.Pods is not None else mvictims.pods
            out = []
            for i, mp in enumerate(mpods or ()):
                uid = mp.UID or mp.uid
                if not uid:
                    raise WireError(f"NodeNameToMetaVictims[{node!r}].Pods[{i}]: UID is missing")
                usage = lookup(uid)
                if usage is None:
                    unknown += 1
                    out.append(Victim(uid))
                else:
                    out.append(Victim(uid, usage[0], usage[1]))
            pdb = mvictims.NumPDBViolations or mvictims.numpdbviolations
            candidates.append(PreemptCandidate(node, tuple(out), pdb))
    else:
        raise WireError(
            "invalid ExtenderPreemptionArgs: both NodeNameToVictims and NodeNameToMetaVictims "
            "are null"
        )
    return PreemptArgs(pod, candidates, unknown)


class _MetaPodOut(msgspec.Struct, gc=False):
    UID: str


class _MetaVictimsOut(msgspec.Struct):
    Pods: list[_MetaPodOut]
    NumPDBViolations: int


class _PreemptResult(msgspec.Struct):
    NodeNameToMetaVictims: dict[str, _MetaVictimsOut]


_encoder = msgspec.json.Encoder()


def encode_preempt(candidates: list[PreemptCandidate] | tuple[PreemptCandidate, ...]) -> bytes:
    """ExtenderPreemptionResult with the given candidates, victims by UID."""
    return _encoder.encode(
        _PreemptResult(
            {
                c.node: _MetaVictimsOut([_MetaPodOut(v.uid) for v in c.victims], c.pdb_violations)
                for c in candidates
            }
        )
    )
