import pytest

from driver.api import models as m
from driver.app import decode
from driver.errors import InvalidRequest


def test_maps_accept_null_empty_and_list() -> None:
    for value in (None, {}, []):
        req = m.parse(m.CreateEndpointRequest, "CreateEndpoint",
                      {"NetworkID": "ab12", "EndpointID": "cd34", "Options": value})
        assert req.Options == {}
    req = m.parse(m.CreateNetworkRequest, "CreateNetwork", {"NetworkID": "ab", "IPv6Data": None})
    assert req.IPv6Data == []


def test_unknown_fields_are_ignored() -> None:
    req = m.parse(m.NetworkRequest, "DeleteNetwork", {"NetworkID": "ab", "Future": 1})
    assert req.NetworkID == "ab"


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (m.NetworkRequest, {}, "NetworkID: Field required"),
        (m.NetworkRequest, {"NetworkID": 5}, "NetworkID: Input should be a valid string"),
        (m.NetworkRequest, {"NetworkID": ""}, "NetworkID: must be an ID"),
        (m.NetworkRequest, {"NetworkID": "../../etc"}, "NetworkID: must be an ID"),
        (m.RequestPoolRequest, {"V6": "true"}, "V6: Input should be a valid boolean"),
        (m.CreateNetworkRequest, {"NetworkID": "a", "IPv4Data": [{"Pool": 1}]}, "IPv4Data[0].Pool: Input should be"),
        (m.ReleaseAddressRequest, {"PoolID": "p"}, "Address: Field required"),
    ],
)
def test_bad_bodies_name_the_field(model: type[m.Wire], body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        m.parse(model, "Verb", body)
    assert str(exc.value).startswith("Verb: invalid request: ")
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "empty request body"), (b"  \n", "empty request body"), (b"{nope", "malformed JSON"),
     (b"[1]", "body must be a JSON object, got list"), (b"\xff\xfe", "malformed JSON")],
)
def test_decode_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode("Verb", raw)


def test_decode_accepts_go_encoder_newline() -> None:
    assert decode("Verb", b'{"a": 1}\n') == {"a": 1}
