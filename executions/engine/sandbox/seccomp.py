"""The seccomp filter (a classic BPF program) that refuses new namespaces inside the sandbox."""

from __future__ import annotations

import errno
import os
import struct

#
# A classic BPF program for bwrap's ``--seccomp FD`` (bwrap loads it right before it execs the
# script, after its own setup, so bwrap itself is not filtered). Written here with ``struct``
# rather than with libseccomp: its Python binding is not installable into a virtualenv from
# PyPI in a maintained form, and the program is short enough to read in full. It returns EPERM
# for a short list of system calls that a script has no use for and that are the usual way
# into kernel bugs or out of a sandbox (new namespaces and mounts, keyrings, BPF, perf,
# ptrace, module and kexec loading, file handles, userfaultfd, io_uring, other processes'
# memory), ENOSYS for clone3 (its flags sit in memory a filter cannot read; glibc then falls
# back to clone, whose flags are checked: any CLONE_NEW* is EPERM), and kills a process that
# makes a system call of another architecture (x32 or i386 entry points on x86_64, arm32 on
# aarch64), which would otherwise bypass the numbers checked. Everything else is allowed: the
# filter narrows the kernel's surface, bwrap's namespaces do the isolating.

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_SECCOMP_NR, _SECCOMP_ARCH, _SECCOMP_ARG0_LOW = 0, 4, 16  # little-endian: low half of args[0]
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_CLONE_NEW_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_X32_SYSCALL_BIT = 0x40000000

# Per architecture: (AUDIT_ARCH_*, {name: number}). Numbers from the kernel's unistd headers.
_SECCOMP_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "unshare": 272,
            "setns": 308,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "open_tree": 428,
            "move_mount": 429,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "mount_setattr": 442,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "bpf": 321,
            "perf_event_open": 298,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "open_by_handle_at": 304,
            "name_to_handle_at": 303,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "swapon": 167,
            "swapoff": 168,
            "reboot": 169,
            "acct": 163,
            "quotactl": 179,
            "syslog": 103,
            "vhangup": 153,
            "lookup_dcookie": 212,
            "iopl": 172,
            "ioperm": 173,
            "clone": 56,
            "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "unshare": 97,
            "setns": 268,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "open_tree": 428,
            "move_mount": 429,
            "fsopen": 430,
            "fsconfig": 431,
            "fsmount": 432,
            "fspick": 433,
            "mount_setattr": 442,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "bpf": 280,
            "perf_event_open": 241,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "open_by_handle_at": 265,
            "name_to_handle_at": 264,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "swapon": 224,
            "swapoff": 225,
            "reboot": 142,
            "acct": 89,
            "quotactl": 60,
            "syslog": 116,
            "vhangup": 58,
            "lookup_dcookie": 18,
            "clone": 220,
            "clone3": 435,
        },
    ),
}


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture (``os.uname().machine``) as bwrap reads it
    (an array of ``struct sock_filter``), or None for an architecture not listed here."""
    machine = machine or os.uname().machine
    if machine not in _SECCOMP_ARCHES:
        return None
    arch, numbers = _SECCOMP_ARCHES[machine]
    denied = [nr for name, nr in numbers.items() if name not in ("clone", "clone3")]
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets.
    program: list[tuple[int, str | None, str | None, int]] = [
        (_BPF_LD_W_ABS, None, None, _SECCOMP_ARCH),
        (_BPF_JEQ_K, None, "kill", arch),
        (_BPF_LD_W_ABS, None, None, _SECCOMP_NR),
    ]
    if machine == "x86_64":
        program.append((_BPF_JGE_K, "kill", None, _X32_SYSCALL_BIT))
    program += [(_BPF_JEQ_K, "deny", None, nr) for nr in denied]
    program += [
        (_BPF_JEQ_K, "clone", None, numbers["clone"]),
        (_BPF_JEQ_K, "enosys", None, numbers["clone3"]),
        (_BPF_RET_K, None, None, _RET_ALLOW),
    ]
    labels = {"clone": len(program)}
    program += [
        (_BPF_LD_W_ABS, None, None, _SECCOMP_ARG0_LOW),
        (_BPF_JSET_K, "deny", None, _CLONE_NEW_FLAGS),
        (_BPF_RET_K, None, None, _RET_ALLOW),
    ]
    labels["deny"] = len(program)
    program.append((_BPF_RET_K, None, None, _RET_ERRNO | errno.EPERM))
    labels["enosys"] = len(program)
    program.append((_BPF_RET_K, None, None, _RET_ERRNO | errno.ENOSYS))
    labels["kill"] = len(program)
    program.append((_BPF_RET_K, None, None, _RET_KILL_PROCESS))
    out = bytearray()
    for index, (code, if_true, if_false, k) in enumerate(program):
        jt = labels[if_true] - index - 1 if if_true else 0
        jf = labels[if_false] - index - 1 if if_false else 0
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


def _seccomp_fd() -> int | None:
    """A pipe's read end holding the filter (bwrap reads it to the end), or None when there is
    no filter for this architecture. The caller passes it to bwrap and closes it."""
    program = seccomp_program()
    if program is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program)  # a few hundred bytes: within the pipe's buffer
    finally:
        os.close(write_end)
    return read_end
