"""mTLS between kube-scheduler and the extender (test 8 of issue 18): the extender serves HTTPS
with ``--tls-client-ca-file``; kube-scheduler with ``enableHTTPS`` and a ``tlsConfig`` carrying
the client certificate gets its pods scheduled through it; a kube-scheduler without the client
certificate is refused in the TLS handshake, and (``ignorable: false``) its pods wait."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.controlplane import make_ca, make_cert
from tests.e2e.extender_proc import Tls
from tests.e2e.harness import Scenario, Session


def _pki(session: Session) -> tuple[Tls, dict[str, str]]:
    folder: Path = session.folder / "mtls"
    if not (folder / "kube-scheduler.crt").exists():
        folder.mkdir(exist_ok=True)
        ca = make_ca(folder, "extender-ca")
        make_cert(folder, "extender", ca, "/CN=priority-extender", server=True)
        client_ca = make_ca(folder, "client-ca")
        make_cert(folder, "kube-scheduler", client_ca, "/CN=kube-scheduler", client=True)
    tls = Tls(
        folder / "extender.crt",
        folder / "extender.key",
        folder / "client-ca.crt",
        folder / "extender-ca.crt",
    )
    tls_config = {
        "certFile": str(folder / "kube-scheduler.crt"),
        "keyFile": str(folder / "kube-scheduler.key"),
        "caFile": str(folder / "extender-ca.crt"),
    }
    return tls, tls_config


def test_mtls_with_the_client_certificate_schedules_and_without_is_refused(
    scenario: Scenario,
) -> None:
    sc = scenario
    tls, tls_config = _pki(sc.s)
    sc.s.ensure(
        policy=sc.s.policy(), tls=tls, scheduler=sc.s.scheduler_config(tls_config=tls_config)
    )
    sc.node("hot", 0.90, cores=64, memory_gib=256)  # emptiest by requests: stock's choice
    cool = sc.node("cool", 0.10, cores=16)
    sc.wait_extender_sees()
    assert sc.wait_bound([sc.pod("with-cert", "batch")]) == {"with-cert": cool}
    assert sc.s.ext.decisions(f"{sc.namespace}/with-cert")  # decided over HTTPS

    without = {"caFile": tls_config["caFile"]}
    sc.s.ensure(policy=sc.s.policy(), tls=tls, scheduler=sc.s.scheduler_config(tls_config=without))
    sc.pod("without-cert", "batch")
    ((_reason, message),) = sc.wait_unschedulable(
        ["without-cert"], reason="SchedulerError"
    ).values()
    assert f"https://127.0.0.1:{sc.s.ext.port}/filter" in message, message
    # TLS 1.3: the client's side of the handshake is done before the server checks the client
    # certificate, so kube-scheduler meets the refusal on its first write or read, and Go words
    # it by timing ("connection reset by peer", "EOF", "server closed idle connection"): the
    # message only says the call failed. That the handshake refused it is shown below.
    assert sc.bindings(["without-cert"]) == {"without-cert": None}
    assert not sc.s.ext.decisions(f"{sc.namespace}/without-cert")

    # The refusal is the extender's, in the handshake: the same request from a client without a
    # certificate fails in TLS, and with the scheduler's certificate it is answered.
    url = f"https://127.0.0.1:{sc.s.ext.port}/filter"
    with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
        _post(url, sc.s.ext.client_context())
    cert, key = Path(tls_config["certFile"]), Path(tls_config["keyFile"])
    assert _post(url, sc.s.ext.client_context(cert, key))[0] == 400  # reached the handler


def _post(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
