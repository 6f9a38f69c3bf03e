"""Device rules on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program compiled from the rule list.

cgroup v2 has no devices.allow/deny files; the kernel instead runs the eBPF programs attached to the
cgroup (attach type BPF_CGROUP_DEVICE) on every open and mknod of a device node, and the access is
granted only if each returns 1. The program is written here instruction by instruction: a handful of
loads, compares and jumps, so a tiny encoder beats a dependency on a BPF toolchain.

Semantics are those of the v1 devices controller, which the rule list was written for: rules are read
from the last to the first and the first that matches decides. An allow rule matches when it grants
every access the request asks for (read, write, mknod), a deny rule when it takes away any of them; a
request that no rule matches is allowed, as in a fresh v1 cgroup (in practice the list starts with a
"deny all" that matches everything).
"""

from __future__ import annotations

import ctypes
import os
import struct

from ocirt.errors import CgroupError, why

# struct bpf_cgroup_dev_ctx { u32 access_type /* access << 16 | type */; u32 major; u32 minor; }
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_ALL_ACCESS = ACC_MKNOD | ACC_READ | ACC_WRITE

# Registers and opcodes (linux/bpf.h, linux/bpf_common.h).
R0, R1, R2, R3, R4, R5 = range(6)
_LDX_MEM_W = 0x61           # BPF_LDX | BPF_MEM | BPF_W
_ALU_AND_K = 0x54           # BPF_ALU | BPF_AND | BPF_K (32 bit)
_ALU_RSH_K = 0x74           # BPF_ALU | BPF_RSH | BPF_K
_ALU_MOV_X = 0xBC           # BPF_ALU | BPF_MOV | BPF_X
_ALU64_MOV_K = 0xB7         # BPF_ALU64 | BPF_MOV | BPF_K
_JMP_JNE_K = 0x55           # BPF_JMP | BPF_JNE | BPF_K
_JMP_JNE_X = 0x5D           # BPF_JMP | BPF_JNE | BPF_X
_JMP_JEQ_K = 0x15           # BPF_JMP | BPF_JEQ | BPF_K
_EXIT = 0x95                # BPF_JMP | BPF_EXIT

# bpf(2) commands and constants.
_PROG_LOAD, _PROG_ATTACH, _PROG_DETACH, _PROG_GET_FD_BY_ID, _PROG_QUERY = 5, 8, 9, 13, 16
PROG_TYPE_CGROUP_DEVICE = 15
ATTACH_CGROUP_DEVICE = 6
F_ALLOW_MULTI = 2
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_LICENSE = b"Apache-2.0\0"


class Insn:
    """One eBPF instruction: struct bpf_insn {u8 code; u8 dst:4, src:4; s16 off; s32 imm}."""

    __slots__ = ("code", "dst", "src", "off", "imm")

    def __init__(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0):
        self.code, self.dst, self.src, self.off, self.imm = code, dst, src, off, imm

    def encode(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)

    def __repr__(self) -> str:
        return f"Insn({self.code:#04x}, dst=r{self.dst}, src=r{self.src}, off={self.off}, imm={self.imm})"


def _u32(value: int) -> int:
    """An unsigned 32-bit immediate as the signed field the encoding stores."""
    return value - (1 << 32) if value >= 1 << 31 else value


def _access_bits(access: str | None) -> int:
    bits = 0
    for letter in access or "rwm":
        if letter not in _ACCESS:
            raise CgroupError(f"invalid device access {access!r}: only r, w and m")
        bits |= _ACCESS[letter]
    return bits


def _wild(value) -> bool:
    return value is None or int(value) < 0


def _rule_block(rule: dict) -> list[Insn]:
    """Instructions that return the rule's verdict when it matches and fall through otherwise."""
    # Insn as is, or (code, dst, src, imm): a jump past the block, taken when the rule does not match.
    items: list[Insn | tuple[int, int, int, int]] = []
    kind = rule.get("type") or "a"
    if kind in ("c", "b"):
        items.append((_JMP_JNE_K, R2, 0, DEV_CHAR if kind == "c" else DEV_BLOCK))
    elif kind != "a":
        raise CgroupError(f"invalid device type {kind!r} in a device rule: only a, b and c")
    access = _access_bits(rule.get("access"))
    allow = bool(rule.get("allow"))
    if access != _ALL_ACCESS:
        items += [Insn(_ALU_MOV_X, R1, R3), Insn(_ALU_AND_K, R1, imm=access)]
        # An allow rule must cover every bit asked for; a deny rule matches when it takes away any.
        items.append((_JMP_JNE_X, R1, R3, 0) if allow else (_JMP_JEQ_K, R1, 0, 0))
    if not _wild(rule.get("major")):
        items.append((_JMP_JNE_K, R4, 0, _u32(int(rule["major"]))))
    if not _wild(rule.get("minor")):
        items.append((_JMP_JNE_K, R5, 0, _u32(int(rule["minor"]))))
    end = len(items) + 2  # the verdict's two instructions follow
    block: list[Insn] = []
    for position, item in enumerate(items):
        if isinstance(item, Insn):
            block.append(item)
        else:
            code, dst, src, imm = item
            block.append(Insn(code, dst, src, off=end - position - 1, imm=imm))
    return block + [Insn(_ALU64_MOV_K, R0, imm=1 if allow else 0), Insn(_EXIT)]


def compile_rules(rules: list[dict], default_allow: bool = True) -> list[Insn]:
    """The whole program for a rule list (in the order the config gives it)."""
    program = [
        Insn(_LDX_MEM_W, R2, R1, off=0), Insn(_ALU_AND_K, R2, imm=0xFFFF),   # r2 = type
        Insn(_LDX_MEM_W, R3, R1, off=0), Insn(_ALU_RSH_K, R3, imm=16),       # r3 = access
        Insn(_LDX_MEM_W, R4, R1, off=4),                                      # r4 = major
        Insn(_LDX_MEM_W, R5, R1, off=8),                                      # r5 = minor
    ]
    for rule in reversed(rules):
        program.extend(_rule_block(rule))
        if _matches_everything(rule):
            # Nothing before it can decide any more, and the verifier refuses unreachable code.
            return program
    program += [Insn(_ALU64_MOV_K, R0, imm=1 if default_allow else 0), Insn(_EXIT)]
    return program


def _matches_everything(rule: dict) -> bool:
    return ((rule.get("type") or "a") == "a" and _access_bits(rule.get("access")) == _ALL_ACCESS
            and _wild(rule.get("major")) and _wild(rule.get("minor")))


def evaluate(rules: list[dict], kind: str, major: int, minor: int, access: str,
             default_allow: bool = True) -> bool:
    """What the compiled program answers, in Python: the reference the tests hold the encoder to."""
    wanted = _access_bits(access)
    for rule in reversed(rules):
        if (rule.get("type") or "a") not in ("a", kind):
            continue
        if not _wild(rule.get("major")) and int(rule["major"]) != major:
            continue
        if not _wild(rule.get("minor")) and int(rule["minor"]) != minor:
            continue
        granted = _access_bits(rule.get("access"))
        if rule.get("allow"):
            if wanted & granted == wanted:
                return True
        elif wanted & granted:
            return False
    return default_allow


# ---- the bpf(2) system call --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(command: int, attr: ctypes.Array) -> int:
    result = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(command), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def load(program: list[Insn]) -> int:
    """BPF_PROG_LOAD; returns the program's fd. The verifier's log comes back in the error."""
    code = b"".join(insn.encode() for insn in program)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(_LICENSE)
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, PROG_TYPE_CGROUP_DEVICE, len(program), ctypes.addressof(insns),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("16s", attr, 48, b"ocirt_dev")
    struct.pack_into("<I", attr, 68, ATTACH_CGROUP_DEVICE)  # expected_attach_type
    try:
        return _bpf(_PROG_LOAD, attr)
    except OSError as err:
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise CgroupError(f"cannot load the device rules' eBPF program: {why(err)}"
                          + (f" (verifier: {detail[0] if len(detail) < 2 else detail[-2]})" if detail else "")) from None


def attached(cgroup_fd: int) -> list[int]:
    """Ids of the device programs attached to this very cgroup (not inherited ones)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIIIQI", attr, 0, cgroup_fd, ATTACH_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64)
    _bpf(_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count])


def _fd_by_id(prog_id: int) -> int:
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<I", attr, 0, prog_id)
    return _bpf(_PROG_GET_FD_BY_ID, attr)


def _attach(command: int, cgroup_fd: int, prog_fd: int, flags: int) -> None:
    attr = ctypes.create_string_buffer(20)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, ATTACH_CGROUP_DEVICE, flags)
    _bpf(command, attr)


def apply(directory: str, rules: list[dict]) -> None:
    """Attach the program for `rules` to the cgroup, then detach the ones it replaces.

    The new program goes on first (BPF_F_ALLOW_MULTI: every attached program must allow), so at no
    moment is the cgroup without rules; the old ones come off after.
    """
    program = compile_rules(rules)
    try:
        cgroup_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CgroupError(f"cannot open cgroup {directory} for its device program: {why(err)}") from None
    prog_fd = -1
    try:
        try:
            old = attached(cgroup_fd)
        except OSError as err:
            raise CgroupError(f"cannot query the device programs of {directory}: {why(err)}") from None
        prog_fd = load(program)
        try:
            _attach(_PROG_ATTACH, cgroup_fd, prog_fd, F_ALLOW_MULTI)
        except OSError as err:
            raise CgroupError(f"cannot attach the device rules' eBPF program to {directory}: {why(err)}") from None
        for prog_id in old:
            try:
                old_fd = _fd_by_id(prog_id)
            except OSError:
                continue
            try:
                _attach(_PROG_DETACH, cgroup_fd, old_fd, 0)
            except OSError as err:
                raise CgroupError(f"cannot detach the previous device program {prog_id} from {directory}: "
                                  f"{why(err)}") from None
            finally:
                os.close(old_fd)
    finally:
        if prog_fd >= 0:
            os.close(prog_fd)
        os.close(cgroup_fd)


def supported() -> bool:
    """Whether this process can load a device program (root with a BPF-enabled kernel)."""
    try:
        os.close(load(compile_rules([])))
        return True
    except CgroupError:
        return False
