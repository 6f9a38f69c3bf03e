/*
 * A small static multi-call program that the exec/terminal/fd tests bind into containers, for what the
 * busybox rootfs can't show:
 *
 *   checker fds            one line per open fd of this process: "<fd> <readlink target>" (the directory
 *                          fd used for the listing itself is left out)
 *   checker notify MSG     send MSG as one datagram to $NOTIFY_SOCKET (sd_notify; "@name" is abstract)
 *   checker open-exe PID   try to open /proc/PID/exe for reading: prints "opened" or the errno name
 *   checker cat-fd N       copy fd N to stdout until end of file
 *
 * Exit status: 0 on success, 1 when the operation failed, 2 for a usage error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *errno_name(int err)
{
	switch (err) {
	case EACCES: return "EACCES";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EBADF: return "EBADF";
	default: return strerror(err);
	}
}

static int list_fds(void)
{
	DIR *dir = opendir("/proc/self/fd");
	if (!dir) {
		printf("opendir /proc/self/fd: %s\n", errno_name(errno));
		return 1;
	}
	int own = dirfd(dir);
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		int fd = atoi(entry->d_name);
		if (fd == own)
			continue;
		char link[64], target[4096];
		snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
		ssize_t len = readlink(link, target, sizeof target - 1);
		if (len < 0)
			snprintf(target, sizeof target, "?%s", errno_name(errno));
		else
			target[len] = '\0';
		printf("%d %s\n", fd, target);
	}
	closedir(dir);
	return 0;
}

static int notify(const char *message)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path) {
		fprintf(stderr, "checker: NOTIFY_SOCKET is not set\n");
		return 1;
	}
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	size_t len = strlen(path);
	if (len >= sizeof addr.sun_path) {
		fprintf(stderr, "checker: NOTIFY_SOCKET is too long\n");
		return 1;
	}
	memcpy(addr.sun_path, path, len);
	if (path[0] == '@')
		addr.sun_path[0] = '\0';
	int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || sendto(sock, message, strlen(message), 0, (struct sockaddr *)&addr,
			       offsetof(struct sockaddr_un, sun_path) + len) < 0) {
		fprintf(stderr, "checker: notify %s: %s\n", path, strerror(errno));
		return 1;
	}
	close(sock);
	return 0;
}

static int open_exe(const char *pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%s/exe", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		printf("%s\n", errno_name(errno));
		return 1;
	}
	printf("opened\n");
	close(fd);
	return 0;
}

static int cat_fd(int fd)
{
	char buf[4096];
	for (;;) {
		ssize_t got = read(fd, buf, sizeof buf);
		if (got == 0)
			return 0;
		if (got < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "checker: read fd %d: %s\n", fd, strerror(errno));
			return 1;
		}
		if (write(1, buf, (size_t)got) != got)
			return 1;
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "fds") == 0)
		return list_fds();
	if (argc == 3 && strcmp(argv[1], "notify") == 0)
		return notify(argv[2]);
	if (argc == 3 && strcmp(argv[1], "open-exe") == 0)
		return open_exe(argv[2]);
	if (argc == 3 && strcmp(argv[1], "cat-fd") == 0)
		return cat_fd(atoi(argv[2]));
	fprintf(stderr, "usage: checker fds | notify MSG | open-exe PID | cat-fd N\n");
	return 2;
}
