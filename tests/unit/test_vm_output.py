"""Unit tests (no root, no qemu) for reading what the guest says on its serial console."""
from __future__ import annotations

from collections import deque

from labkit import vm


def test_console_reader_splits_lines_across_chunks_and_drops_carriage_returns():
    reader = vm.ConsoleReader()
    assert reader.feed(b"hel") == []
    assert reader.feed(b"lo\r\nwor") == ["hello"]
    assert reader.feed(b"ld\r\n\xff\n") == ["world", "\ufffd"]
    assert reader.feed(b"tail") == [] and reader.flush() == ["tail"]


def test_markers_are_found_even_after_kernel_noise_on_the_same_line():
    assert vm.parse_marker("@@LABKIT:INIT@@") == ("INIT", "")
    assert vm.parse_marker("[    4.2] random: @@LABKIT:CMD-END@@ 3") == ("CMD-END", "3")
    assert vm.parse_marker("ordinary output") is None
    assert vm.parse_marker("@@LABKIT:lowercase@@") is None


def test_info_line_becomes_typed_values():
    info = vm.parse_info("kernel=6.1.0-56-amd64 cpus=2 memtotal_kb=468416")
    assert info == {"kernel": "6.1.0-56-amd64", "cpus": 2, "memtotal_kb": 468416}


class FakeVM(vm.VM):
    """A VM object fed console lines by hand: no qemu, only the parsing and bookkeeping."""

    def __init__(self):  # skip the real constructor (it looks for qemu and a kernel)
        self.share_host, self.command, self.progress, self.on_output = True, "x", None, None
        self.times, self.info, self.controllers, self.output_lines = {}, {}, [], []
        self.returncode, self.peak_rss, self._capturing, self._t0 = None, 0, False, 0.0
        self.accel, self.name, self.output_lines = "tcg", "labkit-vm-test", []
        self._recent = deque(maxlen=15)

    def _sample_rss(self):
        pass


def test_command_output_is_captured_only_between_the_markers():
    fake, streamed = FakeVM(), []
    fake.on_output = streamed.append
    for line in ["kernel noise", "@@LABKIT:INIT@@", "@@LABKIT:INFO@@ kernel=6.1.0 cpus=1 memtotal_kb=2000",
                 "@@LABKIT:CGROUP@@ cpuset cpu io memory hugetlb pids rdma misc", "@@LABKIT:READY@@",
                 "@@LABKIT:CMD-BEGIN@@", "line one", "", "line three", "@@LABKIT:CMD-END@@ 7",
                 "after", "@@LABKIT:POWEROFF@@"]:
        fake._handle(line)
    assert fake.output_lines == ["line one", "", "line three"] == streamed
    assert fake.returncode == 7
    assert fake.info["memtotal_kb"] == 2000 and "memory" in fake.controllers
    assert list(fake.times) == ["INIT", "INFO", "CGROUP", "READY", "CMD-BEGIN", "CMD-END", "POWEROFF"]


def test_a_failing_guest_init_raises_with_its_reason():
    fake = FakeVM()
    fake.dir = vm.VM_DIR / "labkit-vm-test-missing"
    fake._handle("mount: mounting host on /host failed: No such device")
    try:
        fake._handle("@@LABKIT:FAIL@@ mount 9p")
    except vm.VMError as exc:
        assert "mount 9p" in str(exc) and "No such device" in str(exc)  # the console lines before it
    else:
        raise AssertionError("FAIL marker did not raise")


def test_progress_line_in_a_log_prints_each_stage_once():
    import io
    stream = io.StringIO()
    show = vm.print_progress(stream)
    for p in [vm.Progress("kernel booting", 0.1, 0.5), vm.Progress("kernel booting", 0.2, 1.0),
              vm.Progress("guest init running", 0.9, 4.2)]:
        show(p)
    assert stream.getvalue().splitlines() == ["[  0.5s] kernel booting", "[  4.2s] guest init running"]
