"""Hypothesis strategies for configuration-file contents, shared by the
unit fuzz test and bench/fuzz_long.py."""

from __future__ import annotations

from hypothesis import strategies as st

from mptcpd.config import (
    ADDR_FLAG_TOKENS,
    ADDRESS_CLASS_TOKENS,
    GROUP_KEYS,
    LOG_DESTINATIONS,
    NOTIFY_FLAG_TOKENS,
)

_KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
_FLAG_WORDS = [name for name, _ in ADDR_FLAG_TOKENS + NOTIFY_FLAG_TOKENS]
_FLAG_WORDS += [name for name, _ in ADDRESS_CLASS_TOKENS] + ["eth*", "br-*", "bridge"]
#: The keys of every group mptcpd reads.
FILE_KEYS = tuple(key for keys in GROUP_KEYS.values() for key in keys)

#: Key names: the real ones, near misses and random ones.
keys = st.one_of(
    st.sampled_from(FILE_KEYS),
    st.sampled_from(FILE_KEYS).map(lambda k: k.replace("-", "_")),
    st.sampled_from(FILE_KEYS).map(str.title),
    st.text(_KEY_CHARS, min_size=1, max_size=12),
)

#: Values: words the parser knows, numbers, escapes and random text.
values = st.one_of(
    st.sampled_from(LOG_DESTINATIONS),
    st.lists(st.sampled_from(_FLAG_WORDS + ["", "bogus"]), max_size=5).map(",".join),
    st.lists(st.text(_KEY_CHARS + "/", max_size=8), max_size=4).map(",".join),
    st.sampled_from(["0", "1", "-1", "1e400", "nan", "inf", "4096", "9" * 5000, "1_0",
                     "0x10", " 5", "\\s\\n\\t\\r\\\\", "\\q", "a\\", "\u00e9\u0663"]),
    # A literal CR may end a value only before a line end, where it is one.
    st.text(max_size=40).filter(lambda v: "\n" not in v and not v.endswith("\r")),
)

_groups = st.one_of(st.just("core"), st.sampled_from(["other", "Core", "core "]),
                    st.sampled_from(["interfaces", "interface eth*", "interface",
                                     "interface  wwan? ", "interface a/b", "plugin x"]),
                    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                          blacklist_characters="[]"), max_size=8))

#: One line of a well-formed file, as text without its line end.
good_lines = st.one_of(
    _groups.map(lambda g: f"[{g}]"),
    st.tuples(keys, st.sampled_from(["=", " = ", "\t=", "= "]), values).map("".join),
    st.sampled_from(["", "   ", "# comment", "\t# k = v", ";not a comment=1"]),
)


@st.composite
def good_files(draw: st.DrawFn) -> tuple[list[str], bytes]:
    """(lines, contents): a file that parses, starting with [core], with
    LF or CRLF line ends and maybe a byte order mark."""
    lines = ["[core]"] + draw(st.lists(good_lines, max_size=20))
    lines = [line for line in lines if not line.startswith(";")]
    end = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    text = bom + end.join(lines) + draw(st.sampled_from(["", end]))
    return lines, text.encode("utf-8")


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A good file with bytes flipped, inserted, deleted or truncated."""
    _, data = draw(good_files())
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            buf[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            buf[pos:pos] = draw(st.sampled_from([b"\r", b"\n", b"\0", b"[", b"]", b"=",
                                                 b"\\", b"\xef\xbb\xbf", b"\xff", b" "]))
        elif action == "delete":
            del buf[pos]
        else:
            del buf[pos:]
    return bytes(buf)


#: Any contents at all: raw bytes, any text, well-formed and mutated files.
any_contents = st.one_of(
    st.binary(max_size=1000),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    good_files().map(lambda lf: lf[1]),
    mutated_files(),
)
