"""Seccomp profiles the way engines and people write them, as OCI ``linux.seccomp`` sections.

- ``docker_default``: Docker's default profile for a container with Docker's default capabilities,
  written here from its list of syscall names (moby's profiles/seccomp/default.json at the time of writing)
  and its argument rules; default action ERRNO with EPERM.
- ``podman_default``: containers-common's /usr/share/containers/seccomp.json (what podman loads), turned
  into the OCI form for a given capability set, as podman does; None when the file is missing.
- ``before_2020``: the same list without the syscalls added to Linux since 5.3 (openat2, close_range,
  faccessat2, clone3, pidfd_*, ...): what a hand-written or older application profile allows, and what
  runtime-tools' own default profile is like.
- ``minimal``: only what runc 1.1.5 calls between loading its filter and execve here (measured with
  ``strace -f`` on this machine, run and exec, noNewPrivileges true and false) plus what the busybox
  programs of the tests call. A runtime that makes any other syscall there fails with it.
"""

from __future__ import annotations

import json
import os

ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]

DOCKER_ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2
execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex
futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32
getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register
io_uring_setup ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64
madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap
mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal
pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink
readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename
renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send
sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd
signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink
symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname
unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
arch_prctl modify_ldt process_vm_readv process_vm_writev ptrace
""".split()

# Added to Linux in 5.3 or later: not in profiles written before, nor in runtime-tools' default profile.
NEWER_THAN_2019 = {
    "openat2", "close_range", "faccessat2", "clone3", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "epoll_pwait2", "futex_waitv", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "memfd_secret", "process_mrelease", "process_madvise", "mount_setattr", "quotactl_fd",
    "set_mempolicy_home_node",
}

_CLONE_NEW_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def _arg_rules() -> list[dict]:
    rules = [{"names": ["socket"], "action": "SCMP_ACT_ALLOW",
              "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}]  # no AF_VSOCK
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]})
    # clone without namespace flags; clone3 answers ENOSYS so that libc falls back to clone.
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": _CLONE_NEW_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
    return rules


def docker_default() -> dict:
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ARCHES,
            "syscalls": [{"names": DOCKER_ALLOWED, "action": "SCMP_ACT_ALLOW"}, *_arg_rules(),
                         {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}


def before_2020() -> dict:
    names = [name for name in DOCKER_ALLOWED if name not in NEWER_THAN_2019]
    return {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ARCHES,
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}, *_arg_rules()]}


PODMAN_PROFILE = "/usr/share/containers/seccomp.json"
_GO_ARCH = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_X86": "386", "SCMP_ARCH_X32": "x32"}


def podman_default(capabilities: list[str]) -> dict | None:
    """containers-common's profile for a container holding ``capabilities`` on x86_64, in OCI form."""
    if not os.path.exists(PODMAN_PROFILE):
        return None
    with open(PODMAN_PROFILE) as f:
        source = json.load(f)
    caps = set(capabilities)

    def applies(rule: dict) -> bool:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if includes.get("arches") and "amd64" not in includes["arches"]:
            return False
        if includes.get("caps") and not set(includes["caps"]) <= caps:
            return False
        if excludes.get("arches") and "amd64" in excludes["arches"]:
            return False
        if excludes.get("caps") and set(excludes["caps"]) & caps:
            return False
        return True

    rules = []
    for rule in source["syscalls"]:
        if not applies(rule):
            continue
        names = rule.get("names") or [rule["name"]]
        out = {"names": names, "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key):
                out[key] = rule[key]
        rules.append(out)
    section = {"defaultAction": source["defaultAction"], "architectures": ARCHES, "syscalls": rules}
    if source.get("defaultErrnoRet") is not None:
        section["defaultErrnoRet"] = source["defaultErrnoRet"]
    return section


# What runc 1.1.5 calls between loading the filter and execve on this machine (strace -f, the union of run and
# exec with noNewPrivileges false and true).
RUNC_AFTER_FILTER = """
capget capset chdir close epoll_ctl faccessat2 fcntl fstat fstatfs futex getcwd getdents64 getpid getppid
newfstatat openat prctl read rt_sigreturn setgid setgroups setuid write execve
""".split()
# What busybox's echo and sleep call, from execve to exit (strace -f).
BUSYBOX_PROGRAMS = """
arch_prctl brk execve exit exit_group getpid getppid getrandom getuid ioctl mprotect newfstatat prctl
prlimit64 readlink rseq rt_sigaction rt_sigprocmask set_robust_list set_tid_address uname write
nanosleep clock_nanosleep
""".split()


def minimal() -> dict:
    return {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ARCHES,
            "syscalls": [{"names": sorted(set(RUNC_AFTER_FILTER) | set(BUSYBOX_PROGRAMS)),
                          "action": "SCMP_ACT_ALLOW"}]}

# Docker's default capability set (also runc's `spec` and podman's defaults are subsets of it).
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
