"""NATS over TLS for a secured stack (shared/tls.py, `autotune up --secure`): a real nats-server that
requires TLS, clients that verify it against the controller's CA, and deploy's check that the server's
certificate names the address a host will dial."""

from __future__ import annotations

import ssl

import pytest

from autotune.deploy.authority import node_ca
from autotune.deploy.record import Refused
from autotune.shared import bus, security, tls
from autotune.shared.settings import Settings
from autotune.supervisor import start_secure_nats, tls_ca


async def test_a_secured_nats_over_tls_is_reached_with_the_ca_and_refused_without(tmp_path):
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    server, passwords = start_secure_nats(data, -1, [], tls=True)
    try:
        assert "TLS required for client connections" in (data / "logs" / "nats-server.log").read_text()
        ca = tls_ca(data)
        assert ca and (data / "nats" / "tls" / tls.CA_KEY).stat().st_mode & 0o077 == 0  # the CA's key stays private
        url = security.nats_url(server.url, "admin", passwords["admin"])
        nc = await bus.connect(Settings(nats_url=url, tls_ca=ca), "tls-test")
        try:
            assert (await nc.jetstream().account_info()).streams >= 0
        finally:
            await nc.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # without the CA the server is not trusted (one try, no reconnects)
            plain = await bus.connect(Settings(nats_url=url), "no-ca", allow_reconnect=False, max_reconnect_attempts=0)
            await plain.close()
    finally:
        server.stop()


def test_the_ca_is_kept_and_the_server_certificate_grows_the_names_it_must_have(tmp_path):
    first = tls.ensure(tmp_path, ["127.0.0.1", "localhost"])
    ca = (tmp_path / tls.CA).read_bytes()
    assert tls.names(tmp_path / tls.CERT) == {"127.0.0.1", "localhost"}
    again = tls.ensure(tmp_path, ["127.0.0.1"])  # nothing missing: the same files
    assert again == first and (tmp_path / tls.CA).read_bytes() == ca
    tls.ensure(tmp_path, ["10.9.0.1", "0.0.0.0"])  # a new address: a new server certificate, the same CA, the old names kept
    assert tls.names(tmp_path / tls.CERT) == {"127.0.0.1", "localhost", "10.9.0.1"}
    assert (tmp_path / tls.CA).read_bytes() == ca


def test_deploy_refuses_a_host_that_would_dial_an_address_the_certificate_does_not_name(tmp_path):
    files = tls.ensure(tmp_path / "tls", ["127.0.0.1", "10.9.0.1"])
    assert node_ca(files.ca, "nats://10.9.0.1:4222") == (tmp_path / "tls" / tls.CA).read_bytes()
    assert node_ca(files.ca, "nats://127.0.0.1:4333") is not None  # through a tunnel's local end
    with pytest.raises(Refused) as refused:
        node_ca(files.ca, "nats://10.9.0.7:4222")
    assert "does not name 10.9.0.7" in str(refused.value) and "--nats-bind 10.9.0.7" in str(refused.value)
    assert node_ca(None, "nats://10.9.0.7:4222") is None  # no TLS: no CA


def test_your_own_pki_is_used_as_it_is_and_never_replaced(tmp_path):
    """Your CA and server certificate, without the CA's key: used while they name the addresses; one
    that lacks a name is an error that says what to do, and nothing is overwritten."""
    made = tls.ensure(tmp_path / "made", ["127.0.0.1", "10.9.0.1"])
    yours = tmp_path / "yours"
    yours.mkdir()
    for name in (tls.CA, tls.CERT, tls.KEY):
        (yours / name).write_bytes((tmp_path / "made" / name).read_bytes())
    ca = (yours / tls.CA).read_bytes()
    assert tls.ensure(yours, ["10.9.0.1"]).cert == str(yours / tls.CERT)
    with pytest.raises(tls.TlsError) as missing:
        tls.ensure(yours, ["10.9.0.2"])
    assert "does not name 10.9.0.2" in str(missing.value) and "no " in str(missing.value)
    assert (yours / tls.CA).read_bytes() == ca and not (yours / tls.CA_KEY).exists()
    assert (yours / tls.CERT).read_bytes() == (tmp_path / "made" / tls.CERT).read_bytes() and made.ca
