#!/usr/bin/env python3
r"""Flow Designer in a window: the example client application with a File menu to look at.

Start it through the agent on a machine with a display (``DISPLAY`` set):

    floatkey-agent run --config config/agent.dev.toml --app flowdesigner -- \\
        .venv/bin/python clients/examples/flowdesigner_tk.py

Its File menu has New Dataflow, Workflow, Subflow, Reporting and Scheduler, each enabled
or greyed out by the license the agent hands over (the panel in the window lists the
same), and its status line names the licensee and the seats. When a new license is
activated the agent asks it to stop (SIGTERM, and the reason in the license file): it
says so in the window — "A new license was activated; the application will restart" —,
saves its document, and exits; the agent exits with 75, the service manager
(``floatkey-agent@.service``) starts it again, and the menu shows the new features.

It takes the options of the terminal version (``flowdesigner.py``, whose license check
and document handling it uses): ``--agent-config`` and ``--document``. Once drawn, it
prints a ``Flow Designer window: {...}`` line with the File menu's entry states as Tk
reports them, for scripts (and the tests) to read; ``Flow Designer notice: ...`` when
it shows a notice. A warning that the idle seat will be reclaimed (``floatkey-agent run
--activity-file``) is shown in the same yellow bar while it stands.

Exit status: 0 when it closed or stopped as asked and saved, 1 when it could not save,
78 without a display, without Tk, or when its document is open in another instance.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

from flowdesigner import (
    CATALOGUE,
    EDIT_INTERVAL_S,
    EXIT_CONFIG,
    EXIT_UNSAVED,
    IDLE_CHECK_EVERY,
    Document,
    License,
    StopSignals,
    add_arguments,
    idle_warning,
    open_document,
    read_license,
    stop_reason,
)

try:
    import tkinter as tk
    from tkinter import font as tkfont
    from tkinter import ttk
except ImportError:  # a Python built without Tk (Debian: the python3-tk package)
    print(
        "flowdesigner: this Python has no Tk (on Debian: apt-get install python3-tk); "
        "clients/examples/flowdesigner.py is the version for a terminal.",
        file=sys.stderr,
    )
    sys.exit(EXIT_CONFIG)

RESTART_NOTICE = "A new license was activated; the application will restart."
#: How long a notice stays on screen before the window closes: long enough to read,
#: well within the agent's shutdown grace (after which it kills the application).
NOTICE_S = 2.5
_GREY = "#8a8a8a"


def status_line(license_: License) -> str:
    """Who the license is for and how many seats it has."""
    if license_.status == "licensed":
        organization = f", {license_.organization}" if license_.organization else ""
        seats = f" — {license_.seats} seats" if license_.seats else ""
        return f"Licensed to {license_.licensee}{organization}{seats}"
    if license_.status == "unlicensed":
        return "Unlicensed: the license server has no product key yet; no features"
    return f"License {license_.status}: no features"


class FlowDesignerWindow:
    """The main window: the File menu, the features panel, the document, the status line."""

    def __init__(
        self,
        root: tk.Tk,
        license_: License,
        document: Document,
        client_id: str,
        stop: StopSignals,
    ) -> None:
        self.root = root
        self.stop = stop  # acted on by the next tick: Tk is not to be called from a handler
        self.license = license_
        self.document = document
        self.client_id = client_id
        self.edits = document.edits
        self._closing = False
        self.save_failed = False  # the exit status says so
        root.title("Flow Designer")
        root.geometry("600x360")
        root.protocol("WM_DELETE_WINDOW", self.quit)

        self._entries: dict[str, int] = {}  # feature -> its File menu entry's index
        menubar = tk.Menu(root)
        self.file_menu = tk.Menu(menubar, tearoff=False)
        self.file_menu.add_command(label="New", command=lambda: self.new("Flow"))
        self.file_menu.add_command(
            label="Open...", command=lambda: self._show_document("one document in this example")
        )
        self.file_menu.add_separator()
        for key, label in CATALOGUE.items():
            self.file_menu.add_command(
                label=f"New {label}",
                state="normal" if key in license_.features else "disabled",
                command=functools.partial(self.new, label),
            )
            self._entries[key] = self._last_entry()
        self.file_menu.add_separator()
        self.file_menu.add_command(label="Save", command=self.save)
        self.file_menu.add_command(label="Quit", command=self.quit)
        menubar.add_cascade(label="File", menu=self.file_menu, underline=0)
        root.configure(menu=menubar)

        # Shown when the application is asked to stop, or its idle seat is to be reclaimed.
        self._idle_shown: str | None = None
        bold = tkfont.nametofont("TkDefaultFont").copy()
        bold.configure(weight="bold")
        self.notice = tk.Label(root, text="", background="#fff3b0", font=bold, pady=8)
        panel = ttk.LabelFrame(root, text="Features of this license", padding=8)
        panel.pack(side="top", fill="x", padx=10, pady=(10, 4))
        for row, (key, label) in enumerate(CATALOGUE.items()):
            enabled = key in license_.features
            colour = "black" if enabled else _GREY
            for column, text in enumerate((label, "enabled" if enabled else "not licensed")):
                tk.Label(panel, text=text, foreground=colour, anchor="w").grid(
                    row=row, column=column, sticky="w", padx=(0, 24)
                )
        self.document_label = ttk.Label(root, anchor="w")
        self.document_label.pack(side="top", fill="x", padx=10, pady=4)
        status = ttk.Frame(root, relief="sunken", padding=(6, 2))
        status.pack(side="bottom", fill="x")
        ttk.Label(status, text=status_line(license_), anchor="w").pack(side="top", fill="x")
        ttk.Label(
            status, text=f"License check: {license_.check}", anchor="w", foreground=_GREY
        ).pack(side="top", fill="x")
        self._show_document()

    # --- what the user does -------------------------------------------------------------

    def new(self, kind: str) -> None:
        """Start a new flow of ``kind`` (an edit, in this example)."""
        self.edits += 1
        self._show_document(f"new {kind} started")

    def save(self) -> bool:
        """Save the document now; say in the window (and on stderr) when that fails."""
        try:
            self.document.save(self.edits, self.license.features, self.client_id)
        except OSError as exc:
            self.save_failed = True
            print(f"flowdesigner: cannot save {self.document.path}: {exc}", file=sys.stderr)
            self._show_document(f"NOT SAVED: {exc.strerror or exc}")
            return False
        self._show_document("saved")
        return True

    def quit(self) -> None:
        """Save and close."""
        self.close(None)

    # --- running ------------------------------------------------------------------------

    def menu_states(self) -> dict[str, str]:
        """The File menu's feature entries as Tk has them: ``normal`` or ``disabled``."""
        return {
            key: str(self.file_menu.entrycget(index, "state"))
            for key, index in self._entries.items()
        }

    def _last_entry(self) -> int:
        index = self.file_menu.index("end")
        assert index is not None  # an entry was just added
        return index

    def drawn(self) -> None:
        """Say, once the window is on screen, what its File menu shows."""
        try:
            # A nested event loop: the ticks (and a stop) go on while it waits.
            self.root.wait_visibility(self.root)
            self.root.update()
        except tk.TclError:  # closed before it was ever shown
            return
        report = {"file_menu": self.menu_states(), "status": status_line(self.license)}
        print(f"Flow Designer window: {json.dumps(report)}", flush=True)

    def tick(self) -> None:
        """Edit a little; stop when a signal asked for it."""
        if self._closing:
            return
        if self.stop.received:
            self.close(stop_reason())
            return
        self.edits += 1
        self._show_document()
        if self.edits % IDLE_CHECK_EVERY == 0:
            self._show_idle_warning(idle_warning())
        self.root.after(int(EDIT_INTERVAL_S * 1000), self.tick)

    def _show_idle_warning(self, warning: str | None) -> None:
        """The server's idle warning in the notice bar while it stands; gone after."""
        if warning == self._idle_shown:
            return
        self._idle_shown = warning
        if warning is None:
            self.notice.pack_forget()
            return
        self._show_notice(warning)
        print(f"Flow Designer notice: {warning}", flush=True)

    def _show_notice(self, text: str) -> None:
        self.notice.configure(text=text)
        if self.notice not in self.root.pack_slaves():
            self.notice.pack(side="top", fill="x", before=self.root.pack_slaves()[0])

    def close(self, reason: tuple[str, str] | None) -> None:
        """Show why (if the agent said), save the work, and close the window.

        A new license: "the application will restart" (the service manager starts it
        again under the new one). Another reason (expiry, a seat released by an
        administrator): the agent's own sentence. Neither (the user, a plain SIGTERM):
        close at once.
        """
        if self._closing:
            return
        self._closing = True
        if reason is not None:
            code, message = reason
            text = RESTART_NOTICE if code == "license.activated" else message
            self._show_notice(text)
        # Saved before the notice lingers: the agent kills what outlives its grace.
        if self.save():
            print(f"Saved {self.edits} edits to {self.document.path}; closing.", flush=True)
        if reason is None:
            self.root.destroy()
            return
        print(f"Closing because: {reason[1]}", flush=True)
        self.root.update()
        if self.notice.winfo_ismapped():
            print(f"Flow Designer notice: {self.notice.cget('text')}", flush=True)
        self.root.after(int(NOTICE_S * 1000), self.root.destroy)

    def _show_document(self, note: str = "") -> None:
        suffix = f" — {note}" if note else ""
        self.document_label.configure(
            text=f"Document {self.document.path.name}: {self.edits} edits{suffix}"
        )


def main() -> int:
    """Open the window; run until it is closed or a signal asks it to stop."""
    parser = argparse.ArgumentParser(description="An example floatkey-licensed application.")
    add_arguments(parser)
    args = parser.parse_args()
    stop = StopSignals()
    client_id = os.environ.get("FLOATKEY_CLIENT_ID", "")
    try:
        root = tk.Tk(className="FlowDesigner")
    except tk.TclError as exc:
        print(
            f"flowdesigner: cannot open a window ({exc}); run it where DISPLAY names a "
            "display, or use clients/examples/flowdesigner.py in a terminal.",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    document = open_document(args.document, client_id)
    if document is None:
        return EXIT_CONFIG
    license_ = read_license(args.agent_config)
    window = FlowDesignerWindow(root, license_, document, client_id, stop)
    window.tick()
    window.drawn()
    root.mainloop()
    return EXIT_UNSAVED if window.save_failed else 0


if __name__ == "__main__":
    sys.exit(main())
