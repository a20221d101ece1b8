/* Guest-to-guest round trips for bench/channels.py, one program for both
 * paths so that neither pays for a process start per message:
 *
 *   pingpong shm reset                  zero the two words the others use
 *   pingpong shm pong N [SLEEP_US]      answer N pings over the ivshmem region
 *   pingpong shm ping N [SLEEP_US]      send N pings; print round-trip times
 *   pingpong tcp pong PORT N            answer N pings on one TCP connection
 *   pingpong tcp ping ADDR PORT N       send N pings; print round-trip times
 *
 * shm: the region is BAR 2 of PCI device 1af4:1110 (resource2 mmapped).
 * The pinger writes sequence number i to word 0 and spins until the ponger
 * has copied it to word 1; with SLEEP_US, both sleep that long between two
 * looks at the word instead of spinning (the vCPU idles). tcp: 4-byte messages, TCP_NODELAY, echoed back.
 * Output: "n=... median_us=... p99_us=... mean_us=..." (the first 10 round
 * trips are warm-up and left out). Built static by bench/channels.py. */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 10
#define SPIN_LIMIT_S 120

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(double *rtt, long n) {
    long m = n - WARMUP;
    double sum = 0;
    for (long i = 0; i < m; i++)
        sum += rtt[WARMUP + i];
    qsort(rtt + WARMUP, m, sizeof *rtt, cmp);
    printf("n=%ld median_us=%.1f p99_us=%.1f mean_us=%.1f\n", m, rtt[WARMUP + m / 2],
           rtt[WARMUP + (m * 99) / 100], sum / m);
}

static int read_hex(const char *dir, const char *file) {
    char path[512], buf[32] = "";
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(buf, sizeof buf, f))
        buf[0] = 0;
    fclose(f);
    return (int)strtol(buf, NULL, 16);
}

static volatile uint32_t *region(void) {
    const char *base = "/sys/bus/pci/devices";
    DIR *d = opendir(base);
    struct dirent *e;
    char dir[512], res[600];
    if (!d)
        die(base);
    while ((e = readdir(d))) {
        snprintf(dir, sizeof dir, "%s/%s", base, e->d_name);
        if (read_hex(dir, "vendor") == 0x1af4 && read_hex(dir, "device") == 0x1110) {
            snprintf(res, sizeof res, "%s/resource2", dir);
            int fd = open(res, O_RDWR | O_SYNC);
            if (fd < 0)
                die(res);
            void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED)
                die("mmap");
            closedir(d);
            return p;
        }
    }
    fprintf(stderr, "no ivshmem device (1af4:1110)\n");
    exit(1);
}

static useconds_t sleep_us;

static void wait_word(volatile uint32_t *w, uint32_t want) {
    double limit = now_us() + SPIN_LIMIT_S * 1e6;
    while (*w != want) {
        if (sleep_us)
            usleep(sleep_us);
        if (now_us() > limit) {
            fprintf(stderr, "timed out waiting for %u\n", want);
            exit(1);
        }
    }
    __sync_synchronize();
}

static int shm(int argc, char **argv) {
    volatile uint32_t *w = region();
    if (argc >= 3 && !strcmp(argv[2], "reset")) {
        w[0] = w[1] = 0;
        __sync_synchronize();
        return 0;
    }
    if (argc < 4)
        return 2;
    long n = atol(argv[3]);
    sleep_us = argc >= 5 ? atoi(argv[4]) : 0;
    if (!strcmp(argv[2], "pong")) {
        for (uint32_t i = 1; i <= n; i++) {
            wait_word(&w[0], i);
            w[1] = i;
            __sync_synchronize();
        }
        return 0;
    }
    double *rtt = calloc(n, sizeof *rtt);
    for (uint32_t i = 1; i <= n; i++) {
        double t0 = now_us();
        w[0] = i;
        __sync_synchronize();
        wait_word(&w[1], i);
        rtt[i - 1] = now_us() - t0;
    }
    report(rtt, n);
    return 0;
}

static void full(int fd, void *buf, size_t len, int writing) {
    size_t done = 0;
    while (done < len) {
        ssize_t r = writing ? write(fd, (char *)buf + done, len - done)
                            : read(fd, (char *)buf + done, len - done);
        if (r <= 0)
            die(writing ? "write" : "read");
        done += r;
    }
}

static int tcp(int argc, char **argv) {
    int one = 1;
    uint32_t msg;
    struct sockaddr_in a = {.sin_family = AF_INET};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (argc >= 5 && !strcmp(argv[2], "pong")) {
        long n = atol(argv[4]);
        a.sin_port = htons(atoi(argv[3]));
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1))
            die("listen");
        int c = accept(s, NULL, NULL);
        if (c < 0)
            die("accept");
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        for (long i = 0; i < n; i++) {
            full(c, &msg, sizeof msg, 0);
            full(c, &msg, sizeof msg, 1);
        }
        return 0;
    }
    if (argc < 6)
        return 2;
    long n = atol(argv[5]);
    a.sin_port = htons(atoi(argv[4]));
    inet_pton(AF_INET, argv[3], &a.sin_addr);
    for (int tries = 0; connect(s, (struct sockaddr *)&a, sizeof a); tries++) {
        if (tries > 300)
            die("connect");
        close(s);
        s = socket(AF_INET, SOCK_STREAM, 0);
        usleep(100000);
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *rtt = calloc(n, sizeof *rtt);
    for (uint32_t i = 1; i <= n; i++) {
        double t0 = now_us();
        msg = i;
        full(s, &msg, sizeof msg, 1);
        full(s, &msg, sizeof msg, 0);
        if (msg != i)
            die("tcp: wrong answer");
        rtt[i - 1] = now_us() - t0;
    }
    report(rtt, n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "shm"))
        return shm(argc, argv);
    if (argc >= 3 && !strcmp(argv[1], "tcp"))
        return tcp(argc, argv);
    fprintf(stderr, "usage: see the comment at the top of bench/pingpong.c\n");
    return 2;
}
