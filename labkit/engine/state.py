"""The engine proper: containers by id and name, their lifecycle, their output, and who waits for them.

The API layer (`server`) turns HTTP into calls on `Engine`; the engine turns those into a labkit
Container per start (`runtime.launch`). Everything here is guarded by one lock with one condition
variable: a request that waits (``/wait``, ``/attach``, ``/logs?follow=1``) sleeps on it, and every
change - output arrived, the container started, exited, was removed - wakes the sleepers up to
look again. One lock keeps the rules readable; containers here are few.

Lifecycle, with Docker's names::

    create -> "created" --start--> "running" --exit--> "exited" --remove--> (gone)
                                        ^                  |
                                        +------start-------+

Docker keeps a container's record across daemon restarts; this engine keeps them in memory, and
kills and removes its containers when it stops.
"""
from __future__ import annotations

import secrets
import signal as signals
import sys
import threading
import time

from .. import cleanup, ptyrelay
from ..errors import Conflict, InvalidValue, NotFound
from . import execs, images as images_mod
from .engine_images import EngineImages
from .record import Record
from .spec import check_name, parse_create, parse_signal, restarts_after
from .streams import STDERR, STDOUT

WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
FOLLOW_INTERVAL = 0.005             # seconds between two looks at a running container's output
KILL_WAIT = 10                      # seconds `kill` waits to see a SIGKILLed container exited


class Engine(EngineImages):
    """Containers for the API: create, start, wait, logs, attach, kill, remove, list, inspect."""

    def __init__(self, image_store: images_mod.ImageStore, runtime=None):
        if runtime is None:
            from . import runtime
        self.images = image_store
        self.runtime = runtime
        self._records: dict[str, Record] = {}
        self.execs = execs.Execs()
        self._layers_dir = None             # layers made by docker commit, while the engine runs
        self._changed = threading.Condition()
        self._closing = False

    # --- finding containers ---------------------------------------------------------------

    def _find(self, ref: str) -> Record:
        """Exact id, then exact name, then a unique id prefix (Docker's order). Hold the lock."""
        if ref in self._records:
            return self._records[ref]
        name = ref.lstrip("/")
        for record in self._records.values():
            if record.name == name:
                return record
        matches = [r for r in self._records.values() if r.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidValue("container id prefix", ref, "a prefix matching exactly one container")
        raise NotFound(f"No such container: {ref}")

    def get(self, ref: str) -> Record:
        with self._changed:
            return self._find(ref)

    def list(self, all: bool = False) -> list[Record]:
        with self._changed:
            records = [r for r in self._records.values() if all or r.running]
        return sorted(records, key=lambda r: r.created, reverse=True)

    # --- create / start --------------------------------------------------------------------

    def create(self, body, name: str | None = None) -> Record:
        name = check_name(name)
        spec = parse_create(body, self.images.find)
        image = self.images.find(spec.image)
        self.runtime.validate(spec, image)  # limits, mounts, sysctls checked before anything exists
        with self._changed:
            if self._closing:
                raise Conflict("the engine is shutting down")
            name = name or cleanup.unique_name()
            for other in self._records.values():
                if other.name == name:
                    raise Conflict(f'Conflict. The container name "/{name}" is already in use by container '
                                   f'"{other.id}". You have to remove (or rename) that container to be '
                                   f'able to reuse that name.')
            record = Record(secrets.token_hex(32), name, spec, image.id)
            self._records[record.id] = record
            self._changed.notify_all()
        return record

    def start(self, ref: str, by_policy: bool = False) -> bool:
        """Start the container; False if it was already running (the API answers 304) - or, for a
        restart by its policy, if a client stopped or removed it meanwhile."""
        with self._changed:
            record = self._find(ref)
            if record.running or record.starting:
                return False
            while record.releasing:
                self._changed.wait(1.0)
            if record.status == "removing" or self._closing:
                raise Conflict(f"container {record.id} is being removed")
            if by_policy and (record.manually_stopped or record.removed):
                record.restarting = False
                return False
            record.starting = True          # a second start now gets 304, a remove waits its turn
            record.manually_stopped = False
            kept, record.kept_root = record.kept_root, None
        try:
            image = self.images.find(record.image_id)
            # Docker's default hostname is the first 12 characters of the container id; a new run
            # goes on in the last run's root, its writable layer (dockerd keeps it until rm).
            process = self.runtime.launch(record.spec, image, hostname=record.id[:12], kept=kept)
        except BaseException as exc:
            if kept is not None:    # a start that failed leaves no root behind (a second release: no-op)
                try:
                    kept.release()
                except Exception:   # noqa: BLE001 - the start's own error is the one to report
                    pass
            with self._changed:
                record.starting, record.restarting, record.error = False, False, str(exc)
                record.status = "exited"
                record.exit_code = getattr(exc, "exit_code", 127 if isinstance(exc, FileNotFoundError) else 128)
                record.exits += 1           # a start that failed ends too: waits and attaches return
                self._changed.notify_all()
            if record.spec.auto_remove:
                self.remove(record.id, force=True)
            raise
        with self._changed:
            record.status, record.starting, record.restarting = "running", False, False
            record.process, record.pid = process, process.pid
            record.started_at, record.finished_at = time.time(), None
            record.oom_killed, record.error = False, ""
            record.details = process.details()
            self._changed.notify_all()
        threading.Thread(target=self._follow, args=(record, process), daemon=True,
                         name=f"{record.name}-follow").start()
        return True

    def _follow(self, record: Record, process) -> None:
        """Follow the container's output files until it exits; then collect its status and release it.

        The output files only grow, so reading what is new every few milliseconds is all it takes
        (Docker's json-file driver is followed the same way by `docker logs -f`). The last read
        happens after the exit was seen, so no last words are lost.
        """
        files = {}
        try:
            while True:  # an OSError here ends the following; the exit is still collected below
                exited = process.poll() is not None
                for stream, path in ((STDOUT, process.stdout_path), (STDERR, process.stderr_path)):
                    if stream not in files:
                        try:
                            files[stream] = open(path, "rb")
                        except FileNotFoundError:
                            continue
                    data = files[stream].read()
                    if data:
                        self._append(record, stream, data)
                if exited:
                    break
                time.sleep(FOLLOW_INTERVAL)
        except OSError as exc:
            record.error = f"reading the container's output: {exc}"
        finally:
            for f in files.values():
                f.close()
        returncode = process.wait()
        oom = process.oom_killed()
        with self._changed:
            # The state changes the moment the process is gone (stop and kill answer then); the
            # kernel objects go next, and a remove or a new start waits until they have.
            record.exit_code = 128 - returncode if returncode < 0 else returncode   # signal N -> 128+N
            record.oom_killed, record.finished_at = oom, time.time()
            record.status, record.process, record.pid = "exited", None, 0
            record.releasing = True
            record.exits += 1
            if self._should_restart(record):     # "restarting" from the moment it exited
                record.restarting = True
                record.restart_count += 1
            self._changed.notify_all()
        try:
            record.kept_root = process          # its root stays for commit and cp until rm (or a
            process.release(keep_root=True)     # new start); namespaces, cgroup of this run: gone now
        except Exception as exc:        # noqa: BLE001 - reported, and the sweep gets what is left
            record.error = f"releasing the container: {exc}"
            print(f"labkit engine: container {record.name}: {record.error}", file=sys.stderr)
        finally:
            with self._changed:
                record.releasing = False
                self._changed.notify_all()
        if record.restarting:
            self._restart_later(record)
        elif record.spec.auto_remove:
            try:
                self.remove(record.id, force=True)
            except (NotFound, Conflict):
                pass

    # --- restart policies: the engine supervises ------------------------------------------------

    def _should_restart(self, record: Record) -> bool:
        """Does its restart policy start it again after this exit? (Hold the lock.)"""
        if record.removed or self._closing or record.manually_stopped:
            return False
        return restarts_after(record.spec.restart_policy, record.exit_code, record.restart_count)

    def _restart_later(self, record: Record) -> None:
        """Docker's back-off: 100 ms before the first restart, doubling each time (at most 1 min)."""
        delay = min(0.1 * 2 ** (record.restart_count - 1), 60.0)

        def restart():
            with self._changed:
                self._changed.wait_for(lambda: self._closing or record.removed or record.manually_stopped,
                                       timeout=delay)
                give_up = self._closing or record.removed or record.manually_stopped
                if give_up:     # else "restarting" until start() has it running (dockerd: never "exited" between)
                    record.restarting = False
                    self._changed.notify_all()
            if not give_up:
                try:
                    self.start(record.id, by_policy=True)
                except Exception as exc:  # noqa: BLE001 - recorded; the policy tries no more
                    record.error = f"restart by policy failed: {exc}"

        threading.Thread(target=restart, name=f"{record.name}-restart", daemon=True).start()

    def _append(self, record: Record, stream: int, data: bytes) -> None:
        with self._changed:
            record.store_output(stream, data)
            self._changed.notify_all()

    # --- wait / kill / remove -----------------------------------------------------------------

    def wait(self, ref: str, condition: str = "not-running", timeout: float | None = None,
             give_up_at_shutdown: bool = True, is_gone=None) -> int:
        """Block until the condition holds; the container's exit code then.

        not-running: now, unless it is running; next-exit: its next exit from now; removed: gone.
        A client's wait ends when the engine shuts down; the engine's own waits do not.
        """
        return self.watch(ref, condition)(timeout, give_up_at_shutdown, is_gone)

    def watch(self, ref: str, condition: str = "not-running"):
        """`wait` in two steps: find the container and note its state now, then return the function
        that blocks (with wait's other arguments). The API answers the CLI's wait with headers in
        between: a container that starts, fails and is removed meanwhile is still seen to end."""
        if condition in ("", None):
            condition = "not-running"
        if condition not in WAIT_CONDITIONS:
            raise InvalidValue("condition", condition, " or ".join(WAIT_CONDITIONS))
        with self._changed:
            record = self._find(ref)
            exits_before = record.exits

        def block(timeout: float | None = None, give_up_at_shutdown: bool = True, is_gone=None) -> int:
            deadline = None if timeout is None else time.monotonic() + timeout

            def done() -> bool:
                if record.removed:
                    return True
                if condition == "not-running":
                    return not record.running
                if condition == "next-exit":
                    return record.exits > exits_before
                return False

            with self._changed:
                while not done() and not (self._closing and give_up_at_shutdown):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"container {record.name} still {record.status} after {timeout} s")
                    if is_gone is not None and is_gone():
                        raise ConnectionAbortedError("the client that waits has gone")
                    self._changed.wait(min(left, 1.0) if left is not None else 1.0)
                return record.exit_code

        return block

    def kill(self, ref: str, signal: str | int | None = None) -> None:
        """Send a signal to pid 1; for SIGKILL, answer once it is seen exited (as dockerd: inspect says exited)."""
        sig = parse_signal(signal) if not isinstance(signal, int) else signal
        with self._changed:
            record = self._find(ref)
            if not record.running or record.process is None:
                raise Conflict(f"Cannot kill container: {ref}: Container {record.id} is not running")
            if record.paused:
                raise Conflict(f"Cannot kill container: {ref}: Container {record.id} is paused. "
                               "Unpause the container before stopping or killing")
            record.manually_stopped = True
            process = record.process
        process.kill(sig)
        if sig == signals.SIGKILL:
            try:
                self.wait(record.id, "not-running", timeout=KILL_WAIT, give_up_at_shutdown=False)
            except (TimeoutError, NotFound):
                pass

    def stop(self, ref: str, timeout: float | None = None) -> bool:
        """The stop signal (Config.StopSignal, SIGTERM), then SIGKILL after `timeout` seconds
        (default Config.StopTimeout, else 10); returns as soon as the process has exited.
        False if it was not running (the API answers 304)."""
        with self._changed:
            record = self._find(ref)
            if record.restarting or record.starting:    # a stop ends a restart policy's wait
                record.manually_stopped = True
                self._changed.notify_all()
            while record.starting:
                self._changed.wait(1.0)
            if not record.running:
                return False
            if record.paused:
                raise Conflict(f"Cannot stop container: {ref}: Container {record.id} is paused. "
                               "Unpause the container before stopping or killing")
        if timeout is None:
            timeout = record.spec.stop_timeout if record.spec.stop_timeout is not None else 10
        try:
            if timeout != 0:
                self.kill(record.id, parse_signal(record.spec.stop_signal))
            if timeout < 0:                 # -1: wait as long as it takes
                self.wait(record.id, "not-running", give_up_at_shutdown=False)
            else:
                self.wait(record.id, "not-running", timeout=timeout, give_up_at_shutdown=False)
        except TimeoutError:
            try:
                self.kill(record.id, signals.SIGKILL)
            except Conflict:
                pass
        except Conflict:
            pass                        # it exited between the check and the signal
        return True

    def remove(self, ref: str, force: bool = False) -> None:
        with self._changed:
            record = self._find(ref)
            if record.running and not force:
                raise Conflict(f"You cannot remove a running container {record.id}. "
                               "Stop the container before attempting removal or force remove")
            record.manually_stopped = True      # a restart policy gives up on it
            self._changed.notify_all()
            while record.starting:              # a start in progress (a restart) finishes first
                self._changed.wait(1.0)
            if record.running and not force:
                raise Conflict(f"You cannot remove a running container {record.id}. "
                               "Stop the container before attempting removal or force remove")
            if record.status == "removing":
                raise Conflict(f"container {record.id} is being removed")
            was_running = record.running
            if was_running:
                record.process.kill(signals.SIGKILL)
                if record.paused:               # a frozen process dies once thawed
                    record.process.unpause()
                    record.paused = False
        if was_running:
            self.wait(record.id, "not-running", give_up_at_shutdown=False)
        with self._changed:
            while record.releasing:             # its kernel objects are gone before the answer
                self._changed.wait(1.0)
            record.status = "removing"
            self._records.pop(record.id, None)
            self.execs.forget_container(record.id)
            kept, record.kept_root = record.kept_root, None
        try:
            if kept is not None:
                kept.release()
        finally:    # "removed" once its root is gone too, as dockerd's: `docker run --rm` leaves nothing
            with self._changed:
                record.removed = True
                self._changed.notify_all()

    # --- pause, stats, top, rename, restart, update, prune ------------------------------------------

    def pause(self, ref: str, freeze: bool = True) -> None:
        """docker pause / unpause: the container's cgroup frozen or thawed (the freezer)."""
        with self._changed:
            record = self._find(ref)
            if not record.running or record.process is None:
                raise Conflict(f"Container {record.id} is not running")
            if record.paused == freeze:
                raise Conflict(f"Container {record.id} is {'already' if freeze else 'not'} paused")
            process = record.process
        process.pause() if freeze else process.unpause()
        with self._changed:
            record.paused = freeze
            self._changed.notify_all()

    def process_or_root(self, ref: str):
        """(record, handle, running): the running container's, else its last run's (root kept)."""
        with self._changed:
            record = self._find(ref)
            if not record.running and record.kept_root is not None:
                return record, record.kept_root, False
        return (*self.running_process(ref), True)

    def running_process(self, ref: str):
        """(record, the runtime's handle) of a running container; Conflict otherwise."""
        with self._changed:
            record = self._find(ref)
            if not record.running or record.process is None:
                raise Conflict(f"Container {record.id} is not running")
            return record, record.process

    def rename(self, ref: str, new_name: str) -> None:
        name = check_name(new_name)
        if name is None:
            raise InvalidValue("name", new_name, "a new container name")
        with self._changed:
            record = self._find(ref)
            for other in self._records.values():
                if other.name == name and other is not record:
                    raise Conflict(f'Conflict. The container name "/{name}" is already in use by container '
                                   f'"{other.id}". You have to remove (or rename) that container to be '
                                   f'able to reuse that name.')
            record.name = name

    def restart(self, ref: str, timeout: float | None = None) -> None:
        self.stop(ref, timeout)
        with self._changed:
            record = self._find(ref)
            while record.releasing or record.restarting:
                self._changed.wait(1.0)
        self.start(record.id)

    def update(self, ref: str, body) -> None:
        """docker update: new limits written into the running container's cgroup (and kept for its
        next start); the one rule holds - a field not applied is refused."""
        from .spec import parse_update
        with self._changed:
            record = self._find(ref)
        changes, spec_changes = parse_update(body, record.spec)
        with self._changed:
            process = record.process if record.running else None
        if process is not None and changes:
            process.update(**changes)
        for key, value in spec_changes.items():
            setattr(record.spec, key, value)

    def prune(self) -> list[str]:
        """docker container prune: every container that is not running is removed."""
        with self._changed:
            stopped = [r.id for r in self._records.values()
                       if not r.running and not r.starting and not r.restarting]
        removed = []
        for ref in stopped:
            try:
                self.remove(ref)
                removed.append(ref)
            except (NotFound, Conflict):
                pass
        return removed

    # --- input --------------------------------------------------------------------------------------

    def _running_process(self, ref: str, wait: bool):
        """The runtime's handle once the container runs (waiting for a start when `wait`); else None."""
        with self._changed:
            record = self._find(ref)
            exits = record.exits
            while wait and not record.running and record.exits == exits and not record.removed \
                    and not self._closing:
                self._changed.wait(1.0)
            return record.process if record.running else None

    def write_stdin(self, ref: str, data: bytes) -> None:
        """Input from an attached client: to pid 1's stdin pipe or terminal (after its start)."""
        process = self._running_process(ref, wait=True)
        if process is not None:
            process.write_stdin(data)

    def close_stdin(self, ref: str) -> None:
        process = self._running_process(ref, wait=True)
        if process is not None:
            process.close_stdin()

    def resize(self, ref: str, rows: int, columns: int) -> None:
        process = self._running_process(ref, wait=False)
        if process is None:
            raise Conflict(f"Container {ref} is not running")
        process.resize(rows, columns)

    # --- exec --------------------------------------------------------------------------------------

    def exec_create(self, ref: str, body) -> execs.ExecRecord:
        with self._changed:
            record = self._find(ref)
            if not record.running:
                raise Conflict(f"Container {record.id} is not running")
        fields = execs.parse(body, record.spec, self.images.find(record.image_id))
        return self.execs.add(record.id, **fields)

    def exec_start(self, exec_id: str):
        """Start an exec instance: (record, process, stdin fd, {fd: stream}, pty master)."""
        record = self.execs.get(exec_id)
        with self._changed:
            container = self._find(record.container_id)
            running = container.process
            if not container.running or running is None:
                raise Conflict(f"Container {container.id} is not running")
        self.execs.claim_start(record)
        try:
            process, stdin_fd, outputs, master = running.exec(
                record.argv, env=record.env, working_dir=record.working_dir or None, user=record.user,
                stdin=record.stdin, tty=record.tty)
        except BaseException as exc:
            record.running, record.exit_code = False, 127 if isinstance(exc, NotFound) else 126
            record.done.set()
            raise
        record.pid, record.master = process.pid, master
        if master is not None and record.size:
            ptyrelay.set_size(master, *record.size)
        return record, process, stdin_fd, outputs, master

    def exec_finish(self, record: execs.ExecRecord, process) -> None:
        """Collect the exit status (before the CLI asks for it)."""
        returncode = process.wait()
        record.exit_code = 128 - returncode if returncode < 0 else returncode
        record.running, record.master = False, None
        record.done.set()

    def exec_resize(self, exec_id: str, rows: int, columns: int) -> None:
        record = self.execs.get(exec_id)
        if record.master is not None:
            ptyrelay.set_size(record.master, rows, columns)
        else:
            record.size = (rows, columns)           # before it started: applied at start

    # --- output ---------------------------------------------------------------------------------

    def output(self, ref: str, *, stdout: bool = True, stderr: bool = True, follow: bool = False,
               tail: int | None = None, since: float = 0, until: float | None = None,
               until_exit: bool = False, replay: bool = True, is_gone=lambda: False):
        """An iterator of (time, stream, bytes) of the container's output.

        follow: keep going until the container is not running; until_exit (attach): keep going
        until the container's next exit, even if it has not started yet; replay: begin with the
        output already logged (else only new output). `is_gone()` says the client hung up.

        Where to begin is decided NOW, not at the first next(): the docker CLI starts the
        container as soon as its attach is answered, and a fast container may have exited before
        the first frame is sent.
        """
        wanted = {stream for stream, on in ((STDOUT, stdout), (STDERR, stderr)) if on}
        with self._changed:
            record = self._find(ref)
            exits_before = record.exits
            position = record.output_start(replay, tail)
        return self._output(record, wanted, position, exits_before, follow, since, until, until_exit, is_gone)

    def _output(self, record, wanted, position, exits_before, follow, since, until, until_exit, is_gone):
        while True:
            with self._changed:
                while True:
                    index = position - record.log_dropped
                    if index < len(record.log):
                        break
                    if until_exit:
                        finished = record.removed or record.exits > exits_before
                    elif follow:
                        finished = record.removed or not record.running
                    else:
                        finished = True
                    if finished or self._closing or is_gone():
                        return
                    self._changed.wait(1.0)
                entries, position = record.output_after(position)
            for entry in entries:
                if until is not None and entry[0] > until:
                    return
                if entry[1] in wanted and entry[0] >= since:
                    yield entry

    # --- the engine's end ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Kill and remove every container (called when the server stops)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            deadline = time.monotonic() + 60
            while any(r.starting for r in self._records.values()) and time.monotonic() < deadline:
                self._changed.wait(0.1)             # a start in progress finishes first
            refs = list(self._records)
        for ref in refs:
            try:
                self.remove(ref, force=True)
            except (NotFound, Conflict):
                pass
        if self._layers_dir is not None:     # committed images live as long as the engine
            import shutil
            shutil.rmtree(self._layers_dir, ignore_errors=True)
            cleanup.release("dir", self._layers_dir.name)
