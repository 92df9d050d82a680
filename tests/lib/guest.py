"""Boot Sprite's test guest under QEMU (TCG) and drive it from a test.

The guest is tests/guest/build-initramfs.sh's kernel + busybox initramfs.
Its /init (tests/guest/init) loads the virtio-blk modules, prints
SPRITE-GUEST-READY on the serial console and then runs shell scripts sent
over that console, answering with their output and exit status.

    from guest import Guest
    with Guest(["-blockdev", "driver=file,filename=/tmp/d.raw,node-name=d0",
                "-device", "virtio-blk-pci,drive=d0"]) as g:
        rc, out = g.run("blockdev --getsize64 /dev/vda")
        g.qmp.execute("query-block")

QEMU runs as `-machine pc,accel=tcg -nographic -nodefaults -no-reboot`
with the serial port and QMP on UNIX sockets in a private work directory
(console.log and qemu.log are written there too).  Every wait is bounded;
a failure raises GuestError whose message ends with the console tail and
QEMU's stderr.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
DEFAULT_QEMU = REPO / "build" / "qemu" / "qemu-system-x86_64"
BUILD_SCRIPT = REPO / "tests" / "guest" / "build-initramfs.sh"
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios")
READY = re.compile(rb"SPRITE-GUEST-READY[^\n]*\n")


class GuestError(RuntimeError):
    """The guest or QEMU failed, or a wait timed out."""


class QMPError(GuestError):
    """A QMP command returned an error; `.error` is QMP's error object."""

    def __init__(self, command: str, error: dict):
        super().__init__(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
        self.error = error


def default_guest_dir() -> Path:
    """Where the guest kernel and initramfs are cached between runs:
    $SPRITE_TEST_GUEST_DIR, else $XDG_CACHE_HOME/sprite/test-guest."""
    if os.environ.get("SPRITE_TEST_GUEST_DIR"):
        return Path(os.environ["SPRITE_TEST_GUEST_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "sprite" / "test-guest"


def build_guest(outdir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Build (or reuse, when its inputs did not change) the guest in
    `outdir`; returns (kernel, initrd) paths.  Raises GuestError."""
    outdir = Path(outdir) if outdir else default_guest_dir()
    r = subprocess.run([str(BUILD_SCRIPT), str(outdir)], capture_output=True, text=True)
    if r.returncode != 0:
        raise GuestError(f"{BUILD_SCRIPT} failed:\n{r.stderr}")
    kernel, initrd = r.stdout.split()
    return Path(kernel), Path(initrd)


def _connect_unix(path: Path, proc: subprocess.Popen, deadline: float) -> socket.socket:
    """Connect to a UNIX socket QEMU is about to create."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise GuestError(f"QEMU did not open {path}")
            time.sleep(0.02)


class QMP:
    """A minimal QMP client on a connected socket.

    After construction the greeting was read and capabilities negotiated.
    execute() sends one command with a fresh id and returns its `return`
    value; events that arrive meanwhile are kept in `events` (oldest first)
    until wait_event() or clear_events() takes them."""

    def __init__(self, sock: socket.socket, timeout: float = 30.0):
        self.sock, self.timeout = sock, timeout
        self.events: list[dict] = []
        self._buf = b""
        self._next_id = 0
        self.greeting = self._read(time.monotonic() + timeout)
        if "QMP" not in self.greeting:
            raise GuestError(f"not a QMP greeting: {self.greeting}")
        self.execute("qmp_capabilities")

    def _read(self, deadline: float) -> dict:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError("QMP: timed out waiting for QEMU")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                raise GuestError(f"QMP: connection to QEMU lost: {e}") from None
            if not data:
                raise GuestError("QMP: QEMU closed the connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None,
                timeout: float | None = None) -> Any:
        """Run `command`; returns its result, raises QMPError on error."""
        self._next_id += 1
        msg = {"execute": command, "id": self._next_id}
        if arguments:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise GuestError(f"QMP {command}: connection to QEMU lost: {e}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            r = self._read(deadline)
            if "event" in r:
                self.events.append(r)
            elif r.get("id") == self._next_id:
                if "error" in r:
                    raise QMPError(command, r["error"])
                return r["return"]

    def wait_event(self, name: str, timeout: float | None = None,
                   match: dict | None = None) -> dict:
        """Remove and return the oldest event `name` (whose `data` contains
        the items of `match`), waiting for it if none arrived yet."""
        deadline = time.monotonic() + (timeout or self.timeout)
        i = 0
        while True:
            while i < len(self.events):
                e = self.events[i]
                if e["event"] == name and all(
                        e.get("data", {}).get(k) == v for k, v in (match or {}).items()):
                    return self.events.pop(i)
                i += 1
            r = self._read(deadline)
            if "event" in r:
                self.events.append(r)

    def clear_events(self) -> list[dict]:
        """Return and forget the events received so far."""
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        self.sock.close()


class Guest:
    """One QEMU process running the test guest.

    `args` are extra QEMU arguments (disks: `-blockdev ... -device
    virtio-blk-pci,drive=...`, `-incoming ...`, `-object secret,...`).
    start() boots it and, if `wait_ready`, returns once the command loop
    listens (pass wait_ready=False for -incoming or -loadvm, whose guest
    is already past that point).  `env` is added to QEMU's environment
    (e.g. AWS_ACCESS_KEY_ID)."""

    def __init__(self, args: Sequence[str] = (), *, qemu: str | os.PathLike | None = None,
                 memory: str = "256M", smp: int = 1, append: str = "",
                 kernel: str | os.PathLike | None = None,
                 initrd: str | os.PathLike | None = None,
                 workdir: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None,
                 wait_ready: bool = True, boot_timeout: float = 60.0):
        self.qemu = Path(qemu) if qemu else DEFAULT_QEMU
        self.args, self.memory, self.smp, self.append = list(args), memory, smp, append
        self.kernel, self.initrd = kernel, initrd
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self.env, self.wait_ready, self.boot_timeout = env, wait_ready, boot_timeout
        self.proc: subprocess.Popen | None = None
        self.qmp: QMP | None = None
        self.boot_seconds: float | None = None   # Popen to ready marker
        self._serial: socket.socket | None = None
        self._console = bytearray()
        self._console_cond = threading.Condition()
        self._console_eof = False
        self._reader: threading.Thread | None = None
        self.argv: list[str] = []
        self.qemu_log = ""   # QEMU's output, kept after the work dir is removed
        self._token = 0

    # Start and stop --------------------------------------------------------
    def start(self) -> "Guest":
        """Launch QEMU paused, connect serial and QMP, `cont`, and wait for
        the ready marker (if wait_ready).  Raises GuestError (QEMU killed)."""
        if not os.access(self.qemu, os.X_OK):
            raise GuestError(f"no QEMU binary at {self.qemu}")
        if self.kernel is None or self.initrd is None:
            self.kernel, self.initrd = build_guest()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="sprite-guest-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        serial_path, qmp_path = self.workdir / "serial.sock", self.workdir / "qmp.sock"
        for p in (serial_path, qmp_path):
            p.unlink(missing_ok=True)
        argv = [str(self.qemu), "-machine", "pc,accel=tcg", "-m", self.memory,
                "-smp", str(self.smp), "-nographic", "-nodefaults", "-no-reboot", "-S",
                "-chardev", f"socket,id=serial0,path={serial_path},server=on,wait=off",
                "-serial", "chardev:serial0",
                "-qmp", f"unix:{qmp_path},server=on,wait=off",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", f"console=ttyS0 panic=-1 {self.append}".strip()]
        for d in FIRMWARE_DIRS:
            argv += ["-L", d]
        argv += self.args
        self.argv = argv
        t0 = time.monotonic()
        with open(self.workdir / "qemu.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env=dict(os.environ, **(self.env or {})))
        try:
            deadline = time.monotonic() + 30
            self._serial = _connect_unix(serial_path, self.proc, deadline)
            self._reader = threading.Thread(target=self._read_console, daemon=True)
            self._reader.start()
            self.qmp = QMP(_connect_unix(qmp_path, self.proc, deadline))
            self.qmp.execute("cont")
            if self.wait_ready:
                self.wait_console(READY, 0, self.boot_timeout, "the ready marker")
                self.boot_seconds = time.monotonic() - t0
        except (GuestError, OSError) as e:
            self.kill()
            raise GuestError(f"QEMU failed to start: {e}{self._diagnostics()}") from None
        except BaseException:
            self.kill()
            raise
        return self

    def shutdown(self, timeout: float = 30.0) -> int:
        """QMP quit, wait for QEMU to exit (SIGKILL after `timeout`), clean
        up; returns QEMU's exit status.  Idempotent."""
        if self.proc and self.proc.poll() is None and self.qmp:
            try:
                self.qmp.execute("quit", timeout=timeout)
            except (GuestError, OSError):
                pass   # QEMU may close the socket before answering
        return self._finish(timeout)

    def poweroff(self, timeout: float = 60.0) -> int:
        """`sync; poweroff -f` in the guest, then wait as shutdown() does."""
        self.start_script("sync; poweroff -f")
        return self._finish(timeout)

    def kill(self) -> None:
        """SIGKILL QEMU (an abrupt host failure) and clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._finish(5)

    def _finish(self, timeout: float) -> int:
        if self.proc is None:
            return 0
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for s in (self.qmp, self._serial):
            if s:
                s.close()
        if self._reader:
            self._reader.join(5)
        if self._own_workdir and self.workdir:
            self.qemu_log = self.qemu_output()
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return self.proc.returncode

    def __enter__(self) -> "Guest":
        return self if self.proc else self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(timeout=10 if exc_type else 30)

    # Console ---------------------------------------------------------------
    def _read_console(self) -> None:
        log = open(self.workdir / "console.log", "wb")
        try:
            while True:
                try:
                    data = self._serial.recv(65536)
                except OSError:
                    data = b""
                with self._console_cond:
                    self._console += data
                    self._console_eof = not data
                    self._console_cond.notify_all()
                if not data:
                    return
                log.write(data)
                log.flush()
        finally:
            log.close()

    def console(self) -> str:
        """Everything the guest printed on its serial console so far."""
        with self._console_cond:
            return self._console.decode(errors="replace")

    def console_position(self) -> int:
        """Current end of the console output, for wait_console(start=...)."""
        with self._console_cond:
            return len(self._console)

    def wait_console(self, pattern: bytes | re.Pattern, start: int = 0,
                     timeout: float = 60.0, what: str | None = None) -> re.Match:
        """Wait until console output from offset `start` matches `pattern`
        (bytes regex); raises GuestError on timeout or if QEMU exits."""
        rx = re.compile(pattern) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        with self._console_cond:
            while True:
                m = rx.search(self._console, start)
                if m:
                    return m
                if self._console_eof:   # QEMU exited (all its output is in)
                    raise GuestError(f"QEMU exited ({self.proc.wait()}) while "
                                     f"waiting for {what or rx.pattern!r}")
                if time.monotonic() > deadline:
                    raise GuestError(f"timed out after {timeout:.0f} s waiting for "
                                     f"{what or rx.pattern!r}")
                self._console_cond.wait(0.1)

    def _send(self, data: bytes) -> None:
        self._serial.sendall(data)

    # Commands --------------------------------------------------------------
    def run(self, script: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell script (any length, any bytes) in the guest with `sh`;
        returns (exit status, stdout+stderr).  Raises GuestError if no
        answer comes within `timeout` (the guest is then unusable)."""
        self._token += 1
        token = b"%d" % self._token
        pos = self.console_position()
        self._send(b"SPRITE-RUN " + token + b" " + base64.b64encode(script.encode()) + b"\n")
        try:
            begin = self.wait_console(rb"SPRITE-BEGIN " + token + rb"\n", pos, timeout)
            end = self.wait_console(rb"\nSPRITE-END " + token + rb" (\d+)\n",
                                    begin.end(), timeout, f"the end of {script!r}")
        except GuestError as e:
            raise GuestError(f"{e}{self._diagnostics()}") from None
        with self._console_cond:
            out = bytes(self._console[begin.end():end.start()])
        return int(end.group(1)), out.decode(errors="replace")

    def start_script(self, script: str) -> None:
        """Start a shell script in the guest without waiting for it (its
        output appears on the console; nothing else can run meanwhile)."""
        self._send(b"SPRITE-RUN 0 " + base64.b64encode(script.encode()) + b"\n")

    def check(self, script: str, timeout: float = 60.0) -> str:
        """run(), but raise GuestError unless the exit status is 0."""
        rc, out = self.run(script, timeout)
        if rc != 0:
            raise GuestError(f"guest command {script!r} exited {rc}:\n{out}")
        return out

    # Diagnostics -----------------------------------------------------------
    def qemu_output(self) -> str:
        """What QEMU printed so far (stdout and stderr), also after it
        exited."""
        if self.workdir is None:
            return self.qemu_log
        try:
            return (self.workdir / "qemu.log").read_text(errors="replace")
        except OSError:
            return self.qemu_log

    def _diagnostics(self, lines: int = 40) -> str:
        console = "\n".join(self.console().splitlines()[-lines:])
        qemu_log = self.qemu_output().strip()
        return (f"\n--- guest console (last {lines} lines) ---\n{console}"
                f"\n--- QEMU output ---\n{qemu_log or '(none)'}"
                f"\n--- QEMU command ---\n{shlex.join(self.argv)}")
