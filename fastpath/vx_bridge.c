/* vx_bridge.c: forwarding across a reload. The daemon re-executes itself to reload (keeping
 * its PID and its TUN and underlay sockets); while the new image starts, a forked child runs
 * the engine's two loops on the same descriptors with the tables as they were, so pods do not
 * notice. The child is forked while the daemon's loops still run (copying a large process's
 * page tables takes tens of milliseconds: at 10 Gbit/s more than a socket buffer holds) and
 * starts its own once told (``go``), right after the daemon's stopped; the new image stops it
 * (``stop``) and waits for its word (``done``) just before it runs its own loops.
 *
 * The child never returns to Python: it is a copy of a multi-threaded process, in which only
 * the engine's C code (its own buffers from malloc, which glibc makes safe after fork) runs. */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *bridge_rx(void *arg) {
    vx_run_rx((vx_io *)arg);
    return NULL;
}

static int cmp_int(const void *a, const void *b) {
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

/* Close every descriptor from 3 up but the engine's and ``extra`` (close_range over the gaps,
 * Linux >= 5.9; one by one before that). */
static void bridge_close_others(const vx_io *io, const int *extra, int n_extra) {
    int keep[2 * VX_TX_SOCKS_MAX + 8 + VX_BRIDGE_EXTRA_MAX + 2], n = 0;
    int fixed[] = {io->tun_fd, io->udp_fd, io->udp6_fd, io->pkt_fd, io->pkt6_fd, io->stop_fd, io->tap_fd};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (fixed[i] >= 3) keep[n++] = fixed[i];
    for (int i = 0; i < io->n_tx_socks; i++) keep[n++] = io->tx_socks[i];
    for (int i = 0; i < io->n_tx_socks6; i++) keep[n++] = io->tx_socks6[i];
    for (int i = 0; i < n_extra; i++)
        if (extra[i] >= 3) keep[n++] = extra[i];
    qsort(keep, (size_t)n, sizeof keep[0], cmp_int);
    int from = 3;
    for (int i = 0; i <= n; i++) {
        int to = i < n ? keep[i] - 1 : ~0U >> 1;
        if (to >= from && syscall(SYS_close_range, (unsigned)from, (unsigned)to, 0) != 0) {
            long max = sysconf(_SC_OPEN_MAX);
            int last = to < (max > 0 && max < 65536 ? max : 65536) ? to : (max > 0 && max < 65536 ? (int)max : 65536);
            for (int fd = from; fd <= last; fd++) close(fd);
        }
        if (i < n && keep[i] + 1 > from) from = keep[i] + 1;
    }
}

static void wait_readable(int fd) {
    struct pollfd pf = {fd, POLLIN, 0};
    while (poll(&pf, 1, -1) < 0 && errno == EINTR) {
    }
}

pid_t vx_bridge(vx_io *io, int stop_fd, int go_fd, int done_fd, int nice, const int *extra, int n_extra) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;  /* the daemon (or -1: no child, errno set) */
    /* The child. It ends with the daemon should the new image die (the forking thread must be
     * the one that later calls execve: PDEATHSIG follows the thread, and execve keeps it). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    /* the engine threads' priority (--engine-nice): the new image starts beside the bridge on
     * the same CPUs, and must not starve it (both threads inherit it from here) */
    setpriority(PRIO_PROCESS, 0, nice);
    /* Nothing but the engine's descriptors (and ``extra``: what keeps the tunnel GSO path's
     * program attached): the health port's listening socket and etcd's connections must not
     * outlive the daemon's own copies. */
    io->stop_fd = stop_fd;
    io->capture = 0;
    io->cap_tx = io->cap_rx = NULL;
    int keep[VX_BRIDGE_EXTRA_MAX + 2], n = 0;
    for (int i = 0; i < n_extra && i < VX_BRIDGE_EXTRA_MAX; i++) keep[n++] = extra[i];
    keep[n++] = go_fd;
    keep[n++] = done_fd;
    bridge_close_others(io, keep, n);
    /* A loop of the daemon may have held the tables' lock at the fork: its copy here is held
     * by a thread this process does not have. The tables themselves are whole (the loops only
     * read them; the daemon's thread that writes them is this one). */
    pthread_mutex_init(&io->core->lock, NULL);
    wait_readable(go_fd);  /* the daemon's loops have stopped */
    pthread_t rx;
    if (pthread_create(&rx, NULL, bridge_rx, io) != 0) _exit(1);
    int rc = vx_run_tx(io);
    pthread_join(rx, NULL);
    uint64_t one = 1;
    if (write(done_fd, &one, sizeof one) < 0) _exit(1);
    _exit(rc ? 1 : 0);
}
