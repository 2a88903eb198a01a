"""Compile the simplest regex patterns, `^[class]+$` and the like, into byte tables.

The contract's identifier patterns are one character class for the first character and one for
the rest. The native decoder checks such a pattern with two table lookups per byte instead of a
regex engine; any other pattern is left to RE2 on the Arrow column. A table entry for a byte
>= 0x80 (every byte of a multi-byte UTF-8 character) is set only when the class admits every
non-ASCII character, as a negated ASCII class does, so the tables need no UTF-8 decoding.
"""

import re
from dataclasses import dataclass

table_size = 256


@dataclass(frozen=True)
class CharClassPattern:
    """`^` first? rest{rest_min,}`$`: `first` and `rest` are byte tables of 0/1 entries."""

    first: bytes | None
    rest: bytes
    rest_min: int


_class = r"\[(?:\\.|[^\]\\])+\]"
_shape = re.compile(rf"\^(?P<first>{_class})?(?P<rest>{_class})(?P<quantifier>[*+])\$")


def compile_char_class_pattern(pattern: str) -> CharClassPattern | None:
    """The tables of `pattern`, or None when it is not of a shape compiled here."""
    shape = _shape.fullmatch(pattern)
    if shape is None:
        return None
    first = _class_table(shape["first"]) if shape["first"] else None
    rest = _class_table(shape["rest"])
    if rest is None or (shape["first"] and first is None):
        return None
    if first is None and shape["quantifier"] == "+":
        # `^[c]+$` is `^[c][c]*$`
        return CharClassPattern(rest, rest, 0)
    return CharClassPattern(first, rest, 1 if shape["quantifier"] == "+" else 0)


def _class_table(text: str) -> bytes | None:
    body = text[1:-1]
    negated = body.startswith("^")
    if negated:
        body = body[1:]
    if any(operator in body for operator in ("&&", "--", "~~")):
        return None  # set operations in a class (Rust regex syntax)
    members = _class_members(body)
    if members is None or not members or any(code >= 0x80 for code in members):
        return None  # a class with non-ASCII members would need UTF-8 decoding
    allowed = [(code in members) != negated for code in range(0x80)]
    # Non-ASCII characters: all of them in a negated ASCII class, none in a plain one.
    return bytes([int(entry) for entry in allowed] + [int(negated)] * (table_size - 0x80))


def _class_members(body: str) -> set[int] | None:
    """Code points of a bracket expression's body, or None for syntax not handled here."""
    characters: list[int] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escape = body[index + 1 : index + 2]
            if escape == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[index + 2 : index + 4]):
                characters.append(int(body[index + 2 : index + 4], 16))
                index += 4
                continue
            if escape and not escape.isalnum():
                characters.append(ord(escape))
                index += 2
                continue
            return None  # \d, \w, \s, \p{..}: Unicode classes, left to the regex engine
        if char == "[":
            return None
        if char == "-" and 0 < index < len(body) - 1:
            characters.append(-1)  # a range marker, resolved below
        else:
            characters.append(ord(char))
        index += 1
    members: set[int] = set()
    position = 0
    while position < len(characters):
        if position + 2 < len(characters) and characters[position + 1] == -1:
            low, high = characters[position], characters[position + 2]
            if low == -1 or high == -1 or low > high:
                return None
            members.update(range(low, high + 1))
            position += 3
        elif characters[position] == -1:
            return None
        else:
            members.add(characters[position])
            position += 1
    return members
