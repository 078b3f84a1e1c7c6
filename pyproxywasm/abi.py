"""The ABI's numbers as Python types: statuses a hostcall answers, and the state flags of a
stream as the host reports them (HttpStream.flags, TcpStream.flags)."""
from __future__ import annotations

from enum import IntEnum, IntFlag

from ._binding import lib


class Status(IntEnum):
    """Proxy-Wasm ABI statuses (proxy_status_t), as hostcalls answer them."""

    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12



class StreamFlags(IntFlag):
    """What happened to a stream so far (a bit set; `s.stream_flags`, or compare `s.flags`
    with these: `s.flags & StreamFlags.RESET`)."""

    REQ_STOPPED = lib.PW_S_REQ_STOPPED  # the filter paused the request / downstream side
    RESP_STOPPED = lib.PW_S_RESP_STOPPED
    LOCAL_REPLY = lib.PW_S_LOCAL_REPLY  # the plugin sent a local response
    RESET = lib.PW_S_RESET  # proxy_close_stream, or a TCP close requested
    FAILED = lib.PW_S_FAILED  # the VM trapped while serving this stream
    DONE = lib.PW_S_DONE  # teardown ran
    REQ_ENDED = lib.PW_S_REQ_ENDED  # end of stream forwarded on the request/downstream side
    RESP_ENDED = lib.PW_S_RESP_ENDED
    REQ_HEADERS_OUT = lib.PW_S_REQ_HEADERS_OUT  # request headers were forwarded
    RESP_HEADERS_OUT = lib.PW_S_RESP_HEADERS_OUT
    REQ_TRAILERS_OUT = lib.PW_S_REQ_TRAILERS_OUT
    RESP_TRAILERS_OUT = lib.PW_S_RESP_TRAILERS_OUT
    BYPASSED = lib.PW_S_BYPASSED  # FAIL_OPEN: the VM failed, the stream passes without the filter
    REQ_HEADERS_CHANGED = lib.PW_S_REQ_HEADERS_CHANGED  # the request headers differ from those given
    RESP_HEADERS_CHANGED = lib.PW_S_RESP_HEADERS_CHANGED
