"""Compaction service addresses: host:port lists, dns:///name:port and job:<name>."""

import pytest

from streamlet.cluster.endpoints import EndpointDirectory, resolve_compaction_endpoints


def test_a_list_of_host_port() -> None:
    assert resolve_compaction_endpoints(" a:1, b.example:50051 ,", None) == [
        "a:1",
        "b.example:50051",
    ]
    assert resolve_compaction_endpoints("", None) == []


@pytest.mark.parametrize("address", ["a", "a:", ":1", "a:x", "a:70000", "dns:///name"])
def test_malformed_addresses_are_errors(address: str) -> None:
    with pytest.raises(ValueError, match="not host:port"):
        resolve_compaction_endpoints(address, None)


def test_dns_resolves_every_address() -> None:
    resolved = resolve_compaction_endpoints("dns:///localhost:50051", None)
    assert "127.0.0.1:50051" in resolved
    assert len(resolved) == len(set(resolved))
    assert resolve_compaction_endpoints("dns:///no-such-host.invalid:1", None) == []


def test_job_addresses_use_the_directory() -> None:
    directory = EndpointDirectory()
    directory.update({"compaction-service": ["h1:1", "h2:2"], "other": ["h3:3"]})
    assert resolve_compaction_endpoints("job:compaction-service", directory) == ["h1:1", "h2:2"]
    assert resolve_compaction_endpoints("job:missing", directory) == []
    with pytest.raises(ValueError, match="only inside a streamlet cluster"):
        resolve_compaction_endpoints("job:compaction-service", None)
    with pytest.raises(ValueError, match="need a job name"):
        resolve_compaction_endpoints("job:", directory)
