"""The vm backend's pure parts, no guest boot: kernel extraction, the guest command line."""

from __future__ import annotations

import bz2
import gzip
import lzma
import subprocess
from pathlib import Path

import pytest

from vpnd_lab import vm
from vpnd_lab.guests.smoke import swanctl_conf

ELF = b"\x7fELF" + bytes(range(256)) * 64
KERNEL = vm.GuestKernel(version="6.1.0-56-amd64", vmlinux=Path("/c/vmlinux"),
                        vmlinuz=Path("/c/vmlinuz"), vng=Path("/venv/bin/vng"))


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress],
                         ids=["gzip", "xz", "bzip2"])
def test_extract_vmlinux_finds_the_elf_after_a_setup_header(compress):
    # A fake magic before the payload must be skipped, trailing padding ignored.
    image = b"MZ" + b"\x1f\x8b\x08junk" + b"BZh\0" + b"\0" * 100 + compress(ELF) + b"\0" * 64
    assert vm.extract_vmlinux(image) == ELF


def test_extract_vmlinux_without_a_kernel_names_the_step():
    with pytest.raises(vm.ProvisionError, match="extract vmlinux"):
        vm.extract_vmlinux(b"MZ" + gzip.compress(b"not an ELF"))


def test_guest_script_exports_env_quoted_and_keeps_a_compound_command_after_cd(tmp_path):
    cwd = tmp_path / "w t"
    cwd.mkdir()
    script = vm.guest_script('echo "$X"; pwd;', env={"X": "it's a b"}, cwd=cwd)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["it's a b", str(cwd)]


def test_guest_script_rejects_a_bad_variable_name():
    with pytest.raises(ValueError, match="'A-B'"):
        vm.guest_script("true", env={"A-B": "1"})


def test_vng_argv_uses_tcg_9p_and_rwdirs():
    argv = vm.vng_argv(KERNEL, "true", rwdirs=["/out"], kvm=False)
    assert argv[:3] == ["/venv/bin/vng", "--run", "/c/vmlinux"]
    assert "--disable-kvm" in argv and "--force-9p" in argv and "--rwdir=/out" in argv
    assert argv[-2:] == ["--exec", "true"]
    assert "--disable-kvm" not in vm.vng_argv(KERNEL, "true", kvm=True)


def test_kernel_package_falls_back_to_the_verified_name(monkeypatch):
    def no_apt(*a, **kw):
        return subprocess.CompletedProcess(a, 100, stdout="", stderr="E: no lists")
    monkeypatch.setattr(vm.subprocess, "run", no_apt)
    assert vm.kernel_package_name() == vm.FALLBACK_KERNEL_PACKAGE


def test_kernel_package_follows_the_meta_package(monkeypatch):
    def apt(*a, **kw):
        return subprocess.CompletedProcess(a, 0, stdout="linux-image-amd64\n  Depends: linux-image-6.1.0-99-amd64\n")
    monkeypatch.setattr(vm.subprocess, "run", apt)
    assert vm.kernel_package_name() == "linux-image-6.1.0-99-amd64"


def test_smoke_config_binds_each_tunnel_to_its_if_id():
    conf = swanctl_conf("cgw", {"t1": "k1", "t2": "k2"})
    t1, t2 = conf.split("\n  t2 {")
    assert "if_id_in = 42" in t1 and "if_id_out = 42" in t1 and "remote_addrs = 198.18.0.1\n" in t1
    assert "if_id_in = 43" in t2 and "remote_addrs = 198.18.0.11" in t2
    assert "local_ts = 0.0.0.0/0" in conf and "remote_ts = 0.0.0.0/0" in conf


def test_python_image_is_attached_read_only_and_mounted_over_the_host_paths():
    image = vm.PythonImage(Path("/c/python-1.img"), (("stdlib", "/py/lib"), ("venv", "/v env")))
    argv = vm.vng_argv(KERNEL, "true", python_image=image)
    assert "--qemu-opts=-drive file=/c/python-1.img,if=virtio,format=raw,readonly=on" in argv
    script = vm.guest_script("true", python_image=image)
    assert "mount --bind /run/vpnd-python/venv '/v env'" in script
    assert "|| echo 'vpnd-lab-vm: python image not mounted" in script   # 9p remains a fallback


def test_run_vpnd_in_guest_runs_this_checkout_with_its_interpreter(monkeypatch):
    seen = {}
    monkeypatch.setattr(vm, "run_in_guest", lambda command, **kw: seen.update(command=command, **kw))
    vm.run_vpnd_in_guest(["lab", "demo", "--backend", "native"], timeout=600, stream=None)
    assert seen["command"] == "python -m vpnd lab demo --backend native"
    assert seen["cwd"] == vm.PROJECT_ROOT and seen["env"]["PYTHONPATH"] == f"{vm.PROJECT_ROOT}:{vm.PROJECT_ROOT / 'lab'}"
    assert seen["env"]["PATH"].startswith(str(Path(vm.sys.executable).parent) + ":")


def test_a_command_too_long_for_the_kernel_command_line_is_refused():
    """x86 cuts the kernel command line at 2048 bytes silently: the guest would idle until
    the timeout (seen with a 2145-byte inline script)."""
    vm.check_command_line("python -m vpnd lab demo --backend native")
    with pytest.raises(ValueError, match="script file"):
        vm.check_command_line("echo " + "x" * 1200)
