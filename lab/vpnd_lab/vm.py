"""The `vm` lab backend: run commands inside a QEMU guest booting Debian's stock kernel.

The host kernel of CI machines has no XFRM interfaces and no kernel ESP, so the route-based
scenario (``ip link add ipsec0 type xfrm ... if_id 42``) cannot run there. virtme-ng boots
Debian's own kernel with the host's userland shared read-only, so the same charon, FRR, venv
and worktree run in the guest unchanged; only the kernel differs.

Provisioning (``python -m vpnd_lab.vm provision``) is idempotent and cached under
``/var/cache/vpnd-lab``. The choices here follow what was measured on this project's machine kind (docs/lab-vm.md).
"""

from __future__ import annotations

import argparse
import asyncio
import bz2
import contextlib
import fcntl
import functools
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TextIO

PROJECT_ROOT = Path(__file__).resolve().parents[2]   # the checkout this vpnd runs from
CACHE_DIR = Path(os.environ.get("VPND_LAB_CACHE", "/var/cache/vpnd-lab"))
KERNEL_META_PACKAGE = "linux-image-amd64"
# Verified on this project's machines; used only when apt-cache cannot resolve the meta package.
FALLBACK_KERNEL_PACKAGE = "linux-image-6.1.0-56-amd64"
HOST_PACKAGES = ("qemu-system-x86", "udev", "kmod", "busybox-static")
VIRTME_NG = "virtme-ng==1.42"
GUEST_MEMORY = "2G"
GUEST_CPUS = 2
# udev's coldplug loads drivers for QEMU's emulated q35 hardware that the lab never uses;
# under TCG each costs boot time. Blacklisting them cut boot-to-command by about 4 s (~30%).
UNUSED_GUEST_DRIVERS = (
    "kvm_amd", "kvm_intel", "kvm", "ccp", "irqbypass", "sr_mod", "cdrom", "sg", "iTCO_wdt",
    "intel_pmc_bxt", "iTCO_vendor_support", "ahci", "libahci", "libata", "evdev", "psmouse",
    "pcspkr", "serio_raw", "i2c_i801", "lpc_ich", "i2c_smbus", "button", "powernow_k8",
    "acpi_cpufreq", "sha512_ssse3", "sha1_ssse3", "crct10dif_pclmul", "ghash_clmulni_intel",
)
# `vng --systemd` boots systemd as PID 1 and runs the --exec script from a patched
# serial-getty@ttyS0.service. Two facts of these machines need kernel arguments for that:
# - The host root holds /.dockerenv (it is a docker container), so systemd in the guest takes
#   itself for a docker container: PID 1 starts console-getty instead of serial-getty@ttyS0
#   (the script never runs). `container=` (empty) in PID 1's environment is authoritative for
#   PID 1 ("not a container"); the kernel passes unknown `name=value` arguments to init's
#   environment. Other processes still see /.dockerenv (systemd-detect-virt says "docker",
#   generators read PID 1's argv instead of /proc/cmdline, so `systemd.mask=`/`systemd.wants=`
#   on the kernel command line do nothing): hence no generator-based arguments here.
# - `systemd.unit=` is parsed by PID 1 itself: booting straight to the script's getty skips
#   multi-user.target, i.e. the host's enabled FRR, strongSwan, PostgreSQL, Prometheus units.
SYSTEMD_KERNEL_ARGS = ("container=", "systemd.unit=serial-getty@ttyS0.service")


class ProvisionError(RuntimeError):
    """The guest's kernel or tools could not be set up; the message says which step."""


@dataclass(frozen=True)
class GuestKernel:
    version: str          # e.g. "6.1.0-56-amd64", also the /lib/modules/<version> name
    vmlinux: Path         # uncompressed image: boots about 2.5 s faster than vmlinuz
    vmlinuz: Path
    vng: Path             # the virtme-ng launcher


@dataclass(frozen=True)
class GuestResult:
    returncode: int | None   # None when the host-side timeout killed the guest
    output: str
    seconds: float
    timed_out: bool = False
    pid: int = 0             # vng's pid, also the process group of vng and QEMU

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --- provisioning ---------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"vpnd-lab-vm: {msg}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, step: str, cwd: Path | None = None,
         env: Mapping[str, str] | None = None) -> str:
    """Run a provisioning command; a failure names the step and shows the tool's output."""
    proc = subprocess.run(list(argv), cwd=cwd, env=None if env is None else {**os.environ, **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise ProvisionError(f"{step}: `{shlex.join(argv)}` exited {proc.returncode}:\n{tail}")
    return proc.stdout


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """Serialise provisioning between concurrent test sessions sharing the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _dpkg_installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "install ok installed"


def _apt_get(*args: str, step: str, cwd: Path | None = None) -> str:
    argv = ["apt-get", "-o", "DPkg::Lock::Timeout=300", *args]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        return _run(argv, step=step, cwd=cwd, env=env)
    except ProvisionError:
        # Stale package lists are the usual cause on a fresh machine: refresh once, retry.
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"], step="apt-get update", env=env)
        return _run(argv, step=step, cwd=cwd, env=env)


def ensure_host_packages() -> None:
    """QEMU; udev (without it virtme-ng loses the script channel and the exit code);
    busybox-static (virtme-ng builds an initramfs with it: the 9p/virtio drivers are modules)."""
    missing = [p for p in HOST_PACKAGES if not _dpkg_installed(p)]
    if missing:
        _log(f"installing {' '.join(missing)}")
        _apt_get("install", "-y", "--no-install-recommends", *missing,
                 step="install QEMU and udev")


def ensure_vng() -> Path:
    """virtme-ng's `vng`, installed into the running interpreter's environment if missing."""
    local = Path(sys.executable).parent / "vng"
    if local.exists():
        return local
    found = shutil.which("vng")
    if found:
        return Path(found)
    _log(f"pip install {VIRTME_NG}")
    _run([sys.executable, "-m", "pip", "install", "--quiet", VIRTME_NG], step="install virtme-ng")
    if not local.exists():
        raise ProvisionError(f"install virtme-ng: {local} missing after pip install")
    return local


def kernel_package_name() -> str:
    """The versioned image package the Debian meta package currently depends on."""
    proc = subprocess.run(["apt-cache", "depends", KERNEL_META_PACKAGE],
                          capture_output=True, text=True)
    names = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", proc.stdout, re.MULTILINE)
    return names[0] if proc.returncode == 0 and names else FALLBACK_KERNEL_PACKAGE


# extract-vmlinux's magics and decoders (lz4/lzo are not used by Debian's kernels).
def _zstd(data: bytes) -> bytes:
    if not shutil.which("zstd"):
        raise ValueError("zstd tool missing")
    proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True)
    return proc.stdout  # trailing garbage makes zstd complain after the frame; keep the frame


def _stream(decompressor) -> Callable[[bytes], bytes]:
    return lambda data: decompressor().decompress(data)


_DECODERS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b"\x1f\x8b\x08", _stream(lambda: zlib.decompressobj(31))),
    (b"\xfd7zXZ\x00", _stream(lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ))),
    (b"BZh", _stream(bz2.BZ2Decompressor)),
    (b"(\xb5/\xfd", _zstd),
    (b"\x5d\x00\x00\x00", _stream(lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE))),
)


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF kernel inside a bzImage, found like scripts/extract-vmlinux: try each
    compression magic at each offset until the payload decompresses to an ELF file."""
    if image[:4] == b"\x7fELF":
        return image
    for magic, decode in _DECODERS:
        start = image.find(magic)
        while start != -1:
            try:
                out = decode(image[start:])
            except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = image.find(magic, start + 1)
    raise ProvisionError("extract vmlinux: no compressed ELF kernel found in the image")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def ensure_guest_kernel(cache: Path = CACHE_DIR) -> GuestKernel:
    """Everything a guest boot needs, installed once and reused (safe to call every run)."""
    ensure_host_packages()
    vng = ensure_vng()
    package = kernel_package_name()
    version = package.removeprefix("linux-image-")
    with _cache_lock(cache):
        kdir = cache / version
        vmlinuz = kdir / f"vmlinuz-{version}"
        vmlinux = kdir / f"vmlinux-{version}"
        if not vmlinuz.exists():
            _log(f"downloading {package}")
            kdir.mkdir(parents=True, exist_ok=True)
            work = Path(cache / f".{version}.tmp")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            _apt_get("download", package, step=f"download {package}", cwd=work)
            debs = sorted(work.glob("*.deb"))
            if not debs:
                raise ProvisionError(f"download {package}: no .deb in {work}")
            root = work / "root"
            _run(["dpkg", "-x", str(debs[0]), str(root)], step=f"unpack {debs[0].name}")
            mods = kdir / "modules"
            shutil.rmtree(mods, ignore_errors=True)
            shutil.move(root / "lib" / "modules" / version, mods)
            shutil.move(root / "boot" / f"vmlinuz-{version}", vmlinuz.with_suffix(".part"))
            shutil.rmtree(work)
            vmlinuz.with_suffix(".part").replace(vmlinuz)  # written last: marks the cache done
        if not vmlinux.exists():
            _log(f"extracting {vmlinux.name}")
            _write_atomic(vmlinux, extract_vmlinux(vmlinuz.read_bytes()))
        host_mods = Path("/lib/modules") / version
        if not (host_mods / "modules.dep").exists():
            # virtme-ng shares the host's /lib/modules with the guest.
            _log(f"installing modules into {host_mods}")
            shutil.copytree(kdir / "modules", host_mods, dirs_exist_ok=True, symlinks=True)
            _run(["depmod", version], step=f"depmod {version}")
    return GuestKernel(version=version, vmlinux=vmlinux, vmlinuz=vmlinuz, vng=vng)


# --- the Python trees on a block device ----------------------------------------------------
# Every file access on the guest's 9p root is a round trip through emulated virtio: importing
# pyroute2 (~3,000 stats and opens) took 10-25 s. The same trees on a read-only ext4 disk
# image are read once through the guest's page cache: 2-2.5x faster Python starts.

@dataclass(frozen=True)
class PythonImage:
    path: Path
    mounts: tuple[tuple[str, str], ...]   # (directory in the image, host path it covers)


def _python_trees() -> list[tuple[str, Path, frozenset[str]]]:
    """(image dir, host dir, top-level names left out): the interpreter's stdlib and venv."""
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": sys.base_prefix,
                                             "base": sys.base_prefix})["stdlib"])
    in_venv = sys.prefix != sys.base_prefix
    # An isolated venv never reads the base site-packages (often the bulk of the tree).
    skip = frozenset({"test", "site-packages"} if in_venv and not _venv_sees_system_site()
                     else {"test"})
    trees = [("stdlib", stdlib, skip)]
    if in_venv:
        trees.append(("venv", Path(sys.prefix), frozenset()))
    return trees


def _venv_sees_system_site() -> bool:
    try:
        cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    except OSError:
        return True
    return re.search(r"^include-system-site-packages\s*=\s*true", cfg, re.MULTILINE | re.I) is not None


def _tree_key(trees: list[tuple[str, Path, frozenset[str]]]) -> str:
    h = hashlib.sha256()
    for name, root, skip in trees:
        h.update(f"{name}={root}\n".encode())
        for top in sorted(os.listdir(root)):
            if top in skip:
                continue
            for dirpath, dirnames, filenames in os.walk(root / top):
                dirnames.sort()
                for f in sorted(filenames):
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(dirpath, f))
                        h.update(f"{dirpath}/{f} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def ensure_python_image(cache: Path = CACHE_DIR) -> PythonImage | None:
    """A read-only ext4 image of the running interpreter's trees, rebuilt when they change.
    None (the guest then reads them over 9p) when mke2fs is missing or the build fails."""
    if not shutil.which("mke2fs"):
        return None
    trees = _python_trees()
    mounts = tuple((name, str(root)) for name, root, _ in trees)
    image = cache / f"python-{_tree_key(trees)}.img"
    if image.exists():
        return PythonImage(image, mounts)
    with _cache_lock(cache):
        if image.exists():
            return PythonImage(image, mounts)
        stage = cache / ".python-stage"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            for name, root, skip in trees:
                (stage / name).mkdir(parents=True)
                # Hard links when the cache is on the same filesystem: nothing is copied.
                cp = "-al" if os.stat(root).st_dev == os.stat(cache).st_dev else "-a"
                for top in os.listdir(root):
                    if top in skip:
                        (stage / name / top).mkdir()   # keep the mount point's shape
                    else:
                        _run(["cp", cp, str(root / top), str(stage / name)], step="stage python")
            used = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file() and not f.is_symlink())
            size_mb = used * 13 // 10 // 2**20 + 64
            tmp = image.with_suffix(".tmp")
            _run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "vpnd-python",
                  "-d", str(stage), str(tmp), f"{size_mb}M"], step="build python image")
            for old in cache.glob("python-*.img"):
                old.unlink()
            tmp.replace(image)
        except ProvisionError as exc:
            _log(f"python image not built, guests read the venv over 9p: {exc}")
            return None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return PythonImage(image, mounts)


def _mount_python_image(image: PythonImage) -> str:
    """Guest shell that puts the image over the host paths; on failure 9p still serves them."""
    at = "/run/vpnd-python"
    binds = " && ".join(f"mount --bind {at}/{name} {shlex.quote(path)}" for name, path in image.mounts)
    return (f"{{ mkdir -p {at} && mount -t ext4 -o ro /dev/vda {at} && {binds}; }} "
            "|| echo 'vpnd-lab-vm: python image not mounted, reading over 9p' >&2")


# --- running ---------------------------------------------------------------------------------

def _cpu_has_virt() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE) is not None


@functools.cache
def kvm_usable(kernel: GuestKernel | None = None, probe_timeout: float = 60.0) -> bool:
    """Hardware virtualisation that really works, else TCG.

    /dev/kvm alone proves nothing here: a nested-virtualisation module offers it without
    vmx/svm, QEMU then aborts or crawls. So: CPU flags first, then a short real boot.
    VPND_LAB_KVM=0/1 overrides the probe.
    """
    forced = os.environ.get("VPND_LAB_KVM")
    if forced in ("0", "1"):
        return forced == "1"
    if not (os.access("/dev/kvm", os.R_OK | os.W_OK) and _cpu_has_virt()):
        return False
    result = run_in_guest("true", kernel=kernel, kvm=True, timeout=probe_timeout)
    return result.ok


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def guest_script(command: str, *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None,
                 python_image: PythonImage | None = None) -> str:
    """The shell text given to --exec: the guest inherits no environment, so export it here."""
    parts = [_mount_python_image(python_image)] if python_image else []
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"env: {name!r} is not a valid environment variable name")
        parts.append(f"export {name}={shlex.quote(str(value))}")
    if cwd is not None:
        parts.append(f"cd {shlex.quote(os.fspath(cwd))}")
    # Braces (newline-closed) keep `a; b` in CMD after the cd, whatever CMD ends with.
    parts.append("{ " + command + "\n}")
    return " && ".join(parts)


# virtme-ng passes the script base64-encoded on the kernel command line, which x86 cuts at
# 2048 bytes without a word: the guest then idles until the timeout. Leave room for the rest.
MAX_ENCODED_SCRIPT = 1500


def check_command_line(script: str) -> None:
    import base64

    n = len(base64.b64encode(script.encode()))
    if n > MAX_ENCODED_SCRIPT:
        raise ValueError(f"guest command too long for the kernel command line ({n} bytes encoded, "
                         f"at most {MAX_ENCODED_SCRIPT}): put it in a script file and run `sh FILE`")


def vng_argv(kernel: GuestKernel, script: str, *, rwdirs: Sequence[str | os.PathLike[str]] = (),
             kvm: bool = False, memory: str = GUEST_MEMORY, cpus: int = GUEST_CPUS,
             python_image: PythonImage | None = None, systemd: bool = False) -> list[str]:
    argv = [str(kernel.vng), "--run", str(kernel.vmlinux)]
    if not kvm:
        argv.append("--disable-kvm")
    argv += ["--memory", memory, "--cpus", str(cpus), "--force-9p",
             "--append", "modprobe.blacklist=" + ",".join(UNUSED_GUEST_DRIVERS)]
    if systemd:
        argv.append("--systemd")
        for arg in SYSTEMD_KERNEL_ARGS:
            argv += ["--append", arg]
    for d in rwdirs:
        argv.append(f"--rwdir={os.fspath(d)}")
    if python_image:
        # read-only: concurrent guests share the image (a writable drive takes a lock).
        argv.append(f"--qemu-opts=-drive file={python_image.path},if=virtio,format=raw,readonly=on")
    argv += ["--exec", script]
    return argv


def _vng_env(kernel: GuestKernel) -> dict[str, str]:
    """vng runs its helpers (virtme-run) from PATH: put the venv's bin first."""
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return {**os.environ, "PATH": f"{kernel.vng.parent}:{path}"}


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not yet dead (zombies excluded: they hold
    no memory and are reaped by whoever inherited them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


async def _kill_group(pgid: int, grace: float = 10.0) -> None:
    """SIGKILL vng, virtme-run and QEMU together; return once they are really gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while live_group_members(pgid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def run_in_guest_async(command: str, *, timeout: float, env: Mapping[str, str] | None = None,
                             rwdirs: Sequence[str | os.PathLike[str]] = (),
                             cwd: str | os.PathLike[str] | None = None,
                             kernel: GuestKernel | None = None, kvm: bool | None = None,
                             stream: TextIO | None = None, python_image: bool = True,
                             systemd: bool = False) -> GuestResult:
    """Boot a guest, run `command` in /bin/sh there, return its exit code and output.

    vng's output is always read through a pipe (QEMU reopens a redirected file truncated).
    The timeout covers boot and command; on expiry the whole process group (vng, QEMU) is
    killed. `stream` gets the output as it arrives, for progress in demos. `python_image`
    serves the running interpreter's stdlib and venv from a disk image (faster imports).
    `systemd` boots systemd as PID 1 (`vng --systemd`, see SYSTEMD_KERNEL_ARGS); the command
    then runs as root from serial-getty@ttyS0.service. Slower: 50-90 s to the command.
    """
    kernel = kernel or await asyncio.to_thread(ensure_guest_kernel)
    if kvm is None:
        kvm = await asyncio.to_thread(kvm_usable, kernel)
    image = None
    if python_image and os.environ.get("VPND_LAB_PYTHON_IMAGE") != "0":
        image = await asyncio.to_thread(ensure_python_image)
    script = guest_script(command, env=env, cwd=cwd, python_image=image)
    check_command_line(script)
    argv = vng_argv(kernel, script, rwdirs=rwdirs, kvm=kvm, python_image=image, systemd=systemd)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, env=_vng_env(kernel))
    chunks: list[str] = []

    async def pump() -> int:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            text = chunk.decode(errors="replace")
            chunks.append(text)
            if stream is not None:
                stream.write(text)
                stream.flush()
        return await proc.wait()

    try:
        returncode: int | None = await asyncio.wait_for(pump(), timeout)
        timed_out = False
    except TimeoutError:
        returncode, timed_out = None, True
    finally:
        # On success this only catches stray helpers; on timeout or cancel, everything.
        await asyncio.shield(_kill_group(proc.pid))
        if proc.returncode is None:
            await proc.wait()
    return GuestResult(returncode=returncode, output="".join(chunks),
                       seconds=time.monotonic() - started, timed_out=timed_out, pid=proc.pid)


def run_in_guest(command: str, *, timeout: float, env: Mapping[str, str] | None = None,
                 rwdirs: Sequence[str | os.PathLike[str]] = (),
                 cwd: str | os.PathLike[str] | None = None,
                 kernel: GuestKernel | None = None, kvm: bool | None = None,
                 stream: TextIO | None = None, python_image: bool = True,
                 systemd: bool = False) -> GuestResult:
    """Synchronous `run_in_guest_async`, for scripts and pytest fixtures.

    QEMU runs in its own session, so a signal to us does not reach it: Ctrl-C (asyncio.run's
    cancellation) and SIGTERM (turned into the same cancellation here) kill the guest first,
    then take their usual effect."""
    terminated = False

    async def guarded() -> GuestResult:
        nonlocal terminated
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        watch = (threading.current_thread() is threading.main_thread()
                 and previous is not signal.SIG_IGN)

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()
        if watch:
            loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await run_in_guest_async(
                command, timeout=timeout, env=env, rwdirs=rwdirs, cwd=cwd, kernel=kernel,
                kvm=kvm, stream=stream, python_image=python_image, systemd=systemd)
        finally:
            if watch:
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, previous)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if terminated:
            signal.raise_signal(signal.SIGTERM)
        raise


def project_env(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """PYTHONPATH for running this checkout's vpnd (and its lab/ packages, vpnd_lab and
    vpnd_testing) in the guest with the host's venv."""
    return {"PYTHONPATH": f"{root}:{root / 'lab'}", "PATH": f"{Path(sys.executable).parent}:"
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def run_vpnd_in_guest(args: Sequence[str], *, timeout: float, stream: TextIO | None = sys.stdout,
                      rwdirs: Sequence[str | os.PathLike[str]] = ()) -> GuestResult:
    """`python -m vpnd ARGS` from this checkout, in a guest: what `vpnd lab ... --backend vm`
    needs (e.g. args = ["lab", "demo", "--backend", "native"])."""
    return run_in_guest(shlex.join(["python", "-m", "vpnd", *args]), timeout=timeout,
                        env=project_env(), cwd=PROJECT_ROOT, rwdirs=rwdirs, stream=stream)


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnd_lab.vm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("provision", help="install QEMU, virtme-ng and the guest kernel (idempotent)")
    sub.add_parser("probe-kvm", help="say whether the guest boots with KVM or TCG")
    run = sub.add_parser("run", help="run a shell command in a guest, with this checkout on PYTHONPATH")
    run.add_argument("--timeout", type=float, default=600.0)
    run.add_argument("--rwdir", action="append", default=[])
    run.add_argument("command")
    args = parser.parse_args(argv)
    try:
        started = time.monotonic()
        kernel = ensure_guest_kernel()
        if args.action == "provision":
            print(f"kernel {kernel.version}\nvmlinux {kernel.vmlinux}\nvng {kernel.vng}\n"
                  f"seconds {time.monotonic() - started:.1f}")
            return 0
        if args.action == "probe-kvm":
            print("kvm" if kvm_usable(kernel) else "tcg")
            return 0
        result = run_in_guest(args.command, timeout=args.timeout, env=project_env(),
                              rwdirs=args.rwdir, cwd=os.getcwd(), kernel=kernel, stream=sys.stdout)
    except ProvisionError as exc:
        print(f"vpnd-lab-vm: {exc}", file=sys.stderr)
        return 2
    if result.timed_out:
        print(f"vpnd-lab-vm: guest killed after {args.timeout:.0f} s timeout", file=sys.stderr)
        return 124
    print(f"vpnd-lab-vm: exit {result.returncode} after {result.seconds:.1f} s", file=sys.stderr)
    return result.returncode if result.returncode is not None else 1


if __name__ == "__main__":
    sys.exit(main())
