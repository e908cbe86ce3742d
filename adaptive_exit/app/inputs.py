"""Reading line-oriented input robustly: from a file or a pipe/terminal, as bytes,
decoded one line at a time (a bad byte spoils only its own line), and with a way to
tell whether more input is waiting (so interactive input is answered line by line
instead of after a full batch)."""
from __future__ import annotations

import os
import select
import stat
from pathlib import Path
from typing import Iterator

BOM = "\ufeff"


class LineSource:
    """The lines of a file or of standard input (``"-"``), as ``(line_number, bytes)``
    without the line ending. Reads the raw file descriptor, so :meth:`ready` knows
    exactly whether a further line can be had without waiting."""

    def __init__(self, path: str | os.PathLike):
        self.name = str(path)
        if self.name == "-":
            self.fd, self._own = 0, False
        else:
            p = Path(path)
            if p.is_dir():
                raise IsADirectoryError(f"--input {p} is a directory; give a text file, or - for standard input")
            if not p.exists():
                raise FileNotFoundError(f"--input {p} not found")
            self.fd, self._own = os.open(p, os.O_RDONLY), True
        self._regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self._buffer = b""
        self._eof = False

    def _fill(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if chunk:
            self._buffer += chunk
        else:
            self._eof = True

    def ready(self) -> bool:
        """Can the next line (or the end) be had without blocking?"""
        if b"\n" in self._buffer or self._eof or self._regular:
            return True
        try:
            return bool(select.select([self.fd], [], [], 0)[0])
        except (OSError, ValueError):  # no select on this kind of descriptor: assume yes
            return True

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        number = 0
        while True:
            while b"\n" not in self._buffer and not self._eof:
                self._fill()
            if b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
            elif self._buffer:
                line, self._buffer = self._buffer, b""
            else:
                return
            number += 1
            yield number, line[:-1] if line.endswith(b"\r") else line

    def close(self) -> None:
        if self._own:
            os.close(self.fd)
            self._own = False


def decode_line(raw: bytes, number: int) -> str:
    """UTF-8 text of one line (a leading byte-order mark dropped on line 1); a
    ValueError naming the line and the offending byte otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    return text[1:] if number == 1 and text.startswith(BOM) else text
