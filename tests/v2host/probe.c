/* What a busybox container cannot do by itself, to prove limits by the kernel's behaviour in the v2 guest.
 * Built statically in the guest by tests/v2host/conftest.py (gcc is part of the guest image).
 *
 *   probe hugetlb PAGES      map PAGES default-size huge pages, touch them one by one: "touched N" each,
 *                            "SIGBUS at N" (exit 3) when the kernel refuses the fault, as a hugetlb limit does
 *   probe alloc MIB FILE     touch MIB MiB of anonymous memory, then print "held MIB" and FILE's content
 *   probe rdma DEVICE COUNT  open the uverbs DEVICE COUNT times, each with a verbs context (the kernel
 *                            charges one hca_handle per context): "context N ok" or "context N: <error>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile long current_page;

static void on_sigbus(int sig)
{
    char line[64];
    int n = snprintf(line, sizeof line, "SIGBUS at %ld\n", current_page);
    (void)sig;
    (void)!write(1, line, (size_t)n);
    _exit(3);
}

static long huge_page_size(void)
{
    FILE *meminfo = fopen("/proc/meminfo", "r");
    char line[256];
    long kib = 2048;
    if (!meminfo)
        return kib * 1024;
    while (fgets(line, sizeof line, meminfo))
        if (sscanf(line, "Hugepagesize: %ld kB", &kib) == 1)
            break;
    fclose(meminfo);
    return kib * 1024;
}

static int hugetlb(long pages)
{
    long size = huge_page_size();
    char *area;
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGBUS, on_sigbus);
    area = mmap(NULL, (size_t)(pages * size), PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (area == MAP_FAILED) {
        printf("mmap: %s\n", strerror(errno));
        return 2;
    }
    for (current_page = 1; current_page <= pages; current_page++) {
        area[(current_page - 1) * size] = 1;
        printf("touched %ld\n", current_page);
    }
    return 0;
}

static int alloc(long mib, const char *file)
{
    size_t size = (size_t)mib << 20;
    char *area = malloc(size), buffer[4096];
    ssize_t n;
    int fd;
    if (!area) {
        printf("malloc: %s\n", strerror(errno));
        return 2;
    }
    for (size_t offset = 0; offset < size; offset += 4096)
        area[offset] = (char)offset | 1;
    printf("held %ld\n", mib);
    fflush(stdout);
    fd = open(file, O_RDONLY);
    if (fd < 0) {
        printf("%s: %s\n", file, strerror(errno));
        return 2;
    }
    while ((n = read(fd, buffer, sizeof buffer)) > 0)
        (void)!write(1, buffer, (size_t)n);
    return 0;
}

/* The uverbs write() ABI: a header, then the command whose first field is where the reply goes. */
struct uverbs_header {
    uint32_t command;
    uint16_t in_words;
    uint16_t out_words;
};
struct get_context {
    struct uverbs_header header;
    uint64_t response;
};
struct get_context_reply {
    uint32_t async_fd;
    uint32_t num_comp_vectors;
};

static int rdma(const char *device, int count)
{
    for (int i = 1; i <= count; i++) {
        struct get_context_reply reply;
        struct get_context command = {{0 /* GET_CONTEXT */, sizeof command / 4, sizeof reply / 4},
                                      (uint64_t)(uintptr_t)&reply};
        int fd = open(device, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            printf("open %s: %s\n", device, strerror(errno));
            return 2;
        }
        if (write(fd, &command, sizeof command) != (ssize_t)sizeof command) {
            printf("context %d: %s\n", i, strerror(errno));
            return 1;
        }
        printf("context %d ok\n", i);
        fflush(stdout);
        /* kept open: the context, and its charge, live as long as the file */
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "hugetlb"))
        return hugetlb(atol(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "alloc"))
        return alloc(atol(argv[2]), argv[3]);
    if (argc == 4 && !strcmp(argv[1], "rdma"))
        return rdma(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: probe hugetlb PAGES | alloc MIB FILE | rdma DEVICE COUNT\n");
    return 64;
}
