"""The test VM's host-side helpers (uzram/tools/vm/__init__.py) that need no qemu."""

import gzip

import pytest

from uzram.tools import vm
from uzram.core.errors import ConfigError


def test_parse_mib():
    assert vm.parse_mib("128M") == 128
    assert vm.parse_mib("1G") == 1024
    assert vm.parse_mib("96") == 96
    assert vm.parse_mib("64MiB") == 64
    for bad in ("", "0", "12K", "-1M", "lots"):
        with pytest.raises(ConfigError):
            vm.parse_mib(bad)


def test_parse_result_pass():
    lines = ["boot noise", "UZRAM-VM-RESULT PASS pages=10 mismatches=0 pswpin=3 pswpout=7 first=none"]
    passed, reason, fields = vm.parse_result(lines)
    assert passed and reason == ""
    assert fields["pswpin"] == "3" and fields["pswpout"] == "7"


def test_parse_result_fail_and_missing():
    passed, reason, fields = vm.parse_result(["UZRAM-VM-RESULT FAIL stage=swapon"])
    assert not passed and reason == "FAIL stage=swapon"
    passed, reason, _ = vm.parse_result(["UZRAM-VM-EATER-EXIT 137"])
    assert not passed and "137" in reason
    passed, reason, _ = vm.parse_result([], timed_out=True)
    assert not passed and "timed out" in reason
    # A PASS only counts on a line of its own, not quoted inside another.
    passed, _, _ = vm.parse_result(["echo UZRAM-VM-RESULT PASS"], exit_status=0)
    assert not passed


def test_cpio_newc_layout():
    cpio = vm.Cpio()
    cpio.directory("bin")
    cpio.file("init", b"#!/bin/sh\n", 0o755)
    data = cpio.finish()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data and b"init\0" in data


def test_qemu_argv_has_no_network_and_escapes_commas(tmp_path):
    art = vm.Artifacts(kernel=tmp_path / "vmlinux", initrd=tmp_path / "initrd.gz", kernel_package="k",
                       modules=(), builtin=())
    argv = vm.qemu_argv(art, "/tmp/a,b/nbd.sock", 96, 154)
    drive = argv[argv.index("-drive") + 1]
    assert "server.path=/tmp/a,,b/nbd.sock," in drive
    assert argv[argv.index("-nic") + 1] == "none"
    assert "uzram.eat=154" in argv[argv.index("-append") + 1]


def test_extract_vmlinux_rejects_garbage():
    assert vm._extract_vmlinux(b"\0" * 4096) is None
    assert vm._extract_vmlinux(gzip.compress(b"x")) is None


def test_run_without_socket_is_a_user_error(tmp_path):
    with pytest.raises(vm.VmError, match="no such socket"):
        vm.run(tmp_path / "missing.sock")
