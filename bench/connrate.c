/* New TCP connections per second, for the data-path benchmark.
 *   connrate sink PORT            accept, send one byte, close; prints "ready"
 *                                 (IPv4 and IPv6: a dual-stack socket)
 *   connrate rate HOST PORT SECS  connect, read the byte, reset; prints connections/s
 *                                 (HOST an IPv4 or IPv6 address)
 * The client resets (SO_LINGER 0) so no TIME_WAIT piles up across runs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    struct sockaddr_in addr = {.sin_family = AF_INET};
    struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
    int one = 1, zero = 0;
    if (argc == 3 && !strcmp(argv[1], "sink")) {
        int s = socket(AF_INET6, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        addr6.sin6_port = htons(atoi(argv[2]));
        if (bind(s, (void *)&addr6, sizeof addr6) || listen(s, 4096)) {
            perror("sink");
            return 1;
        }
        printf("ready\n");
        fflush(stdout);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            (void)!write(c, "x", 1);
            close(c);
        }
    }
    if (argc == 5 && !strcmp(argv[1], "rate")) {
        struct linger reset = {1, 0};
        char byte;
        long n = 0, failed = 0;
        int family = strchr(argv[2], ':') ? AF_INET6 : AF_INET;
        void *to = family == AF_INET6 ? (void *)&addr6 : (void *)&addr;
        socklen_t size = family == AF_INET6 ? sizeof addr6 : sizeof addr;
        inet_pton(AF_INET, argv[2], &addr.sin_addr);
        inet_pton(AF_INET6, argv[2], &addr6.sin6_addr);
        addr.sin_port = addr6.sin6_port = htons(atoi(argv[3]));
        double start = now(), end = start + atof(argv[4]);
        while (now() < end) {
            int c = socket(family, SOCK_STREAM, 0);
            setsockopt(c, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
            if (connect(c, to, size) == 0 && read(c, &byte, 1) == 1) n++;
            else failed++;
            close(c);
        }
        printf("%.0f %ld\n", n / (now() - start), failed);
        return 0;
    }
    fprintf(stderr, "usage: connrate sink PORT | connrate rate HOST PORT SECONDS\n");
    return 2;
}
