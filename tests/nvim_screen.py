"""A Neovim UI in a test: the screen as nvim draws it (ext_linegrid events), as text or PNG.

The test attaches as a UI, so what is captured is what a user of a terminal would see, ghost
text and next-edit previews included, rendered cell by cell with the highlight colours nvim
sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/dejavu/DejaVuSansMono.ttf",
)


class Screen:
    def __init__(self, nvim: Any, cols: int = 72, rows: int = 10) -> None:
        self.nvim = nvim
        self.cols, self.rows = cols, rows
        self.cells: list[list[tuple[str, int]]] = [[(" ", 0)] * cols for _ in range(rows)]
        self.attrs: dict[int, dict[str, Any]] = {0: {}}
        self.fg, self.bg = 0xD0D0D0, 0x1C1C1C
        nvim.ui_attach(cols, rows, rgb=True, ext_linegrid=True)

    def update(self) -> None:
        """Take in what nvim drew so far, then redraw and take in everything up to its end."""
        pending = self.nvim._session._pending_messages  # what arrived during earlier requests
        while pending:
            self._take(pending.popleft())
        self.nvim.command("redraw!")
        while True:
            message = self.nvim.next_message()
            if message is None or (self._take(message) and not pending):
                return

    def _take(self, message: Any) -> bool:
        kind, name, args = message
        return kind == "notification" and name == "redraw" and self._apply(args)

    def _apply(self, batches: list[Any]) -> bool:
        flushed = False
        for batch in batches:
            event, *calls = batch
            for call in calls:
                if event == "grid_line":
                    self._line(*call[:4])
                elif event == "grid_clear":
                    self.cells = [[(" ", 0)] * self.cols for _ in range(self.rows)]
                elif event == "grid_scroll":
                    self._scroll(*call[1:6])
                elif event == "hl_attr_define":
                    self.attrs[call[0]] = call[1]
                elif event == "default_colors_set":
                    if call[0] >= 0:
                        self.fg = call[0]
                    if call[1] >= 0:
                        self.bg = call[1]
                elif event == "flush":
                    flushed = True
        return flushed

    def _line(self, grid: int, row: int, col: int, cells: list[Any]) -> None:
        if row >= self.rows:
            return
        hl = 0
        for cell in cells:
            text = cell[0]
            if len(cell) > 1:
                hl = cell[1]
            for _ in range(cell[2] if len(cell) > 2 else 1):
                if col < self.cols:
                    self.cells[row][col] = (text, hl)
                col += 1

    def _scroll(self, top: int, bot: int, left: int, right: int, rows: int) -> None:
        region = [row[left:right] for row in self.cells[top:bot]]
        for i in range(top, bot):
            source = i + rows
            if top <= source < bot:
                self.cells[i][left:right] = region[source - top]

    def text(self) -> str:
        return "\n".join("".join(c for c, _ in row).rstrip() for row in self.cells)

    def png(self, path: Path, cell_w: int = 9, cell_h: int = 18) -> None:
        from PIL import Image, ImageDraw, ImageFont

        font: Any = ImageFont.load_default()
        for candidate in FONTS:
            if Path(candidate).exists():
                font = ImageFont.truetype(candidate, 15)
                break
        image = Image.new("RGB", (self.cols * cell_w, self.rows * cell_h), _rgb(self.bg))
        draw = ImageDraw.Draw(image)
        for y, row in enumerate(self.cells):
            for x, (text, hl) in enumerate(row):
                attr = self.attrs.get(hl, {})
                fg, bg = attr.get("foreground", self.fg), attr.get("background", self.bg)
                if attr.get("reverse"):
                    fg, bg = bg, fg
                box = (x * cell_w, y * cell_h, (x + 1) * cell_w, (y + 1) * cell_h)
                if bg != self.bg:
                    draw.rectangle(box, fill=_rgb(bg))
                if text.strip():
                    draw.text((box[0], box[1] + 1), text, fill=_rgb(fg), font=font)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def _rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF
