/*
 * loadgen.c - small epoll-based load generator for newline-echo servers.
 *
 * Single-threaded, level-triggered epoll.  Every reply is verified byte for
 * byte against what was sent; mismatches, resets and unexpected EOFs are
 * counted as errors.  The run is bounded by an overall deadline, so the
 * program never hangs, whatever the server does.
 *
 * Transports:
 *   --tcp HOST:PORT    TCP (IPv4 "127.0.0.1:8000" or IPv6 "[::1]:8000")
 *   --unix PATH        Unix stream socket
 *   --udp HOST:PORT    UDP; each of the N sockets does ping-pong, lost
 *                      datagrams are re-sent after --udp-timeout ms.
 *   --tls              (with --tcp or --unix) TLS 1.3 over the stream, via
 *                      OpenSSL; the server's certificate is not verified
 *                      (a loopback benchmark), no session resumption, so
 *                      every connection does a full handshake.  Keep-alive
 *                      runs do their handshakes before the barrier (outside
 *                      the measured window); with --churn every request
 *                      is connect + handshake + line + close_notify, so
 *                      requests/s = handshakes/s.  Only when built with
 *                      -DLOADGEN_TLS (see --version).
 *
 * Workload shape (stream transports):
 *   -c N               connections (or UDP sockets; churn concurrency)
 *   -d D               pipeline depth: D lines in one write, then wait for
 *                      D replies (1 = ping-pong)
 *   --churn            connect, send one line, read the reply, close, repeat
 *   -s BYTES           message size including the trailing newline
 *   -t SECS            measured duration
 *   -w SECS            warm-up (full load, not counted) before measuring
 *   --ramp-timeout S   connection phase bound: first every connection
 *                      completes ONE request and waits (a barrier, so that
 *                      all N are accepted before the load starts); after S
 *                      seconds the load starts anyway (reported as
 *                      "ramp_incomplete").  Churn has no barrier.
 *
 * Output: "MARK start" / "MARK end" lines when the measured window opens and
 * closes (so a supervisor can sample server CPU time at the right moments),
 * then a single JSON object on stdout.  Exit status 0 when the run completed
 * (even with errors: read the JSON), 2 on usage errors, 1 on setup failure.
 *
 * Build: cc -O2 -Wall -Wextra -o loadgen loadgen.c
 *   with TLS: cc -O2 -Wall -Wextra -DLOADGEN_TLS -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#define HAVE_TLS 1
#else
#define HAVE_TLS 0
typedef struct ssl_st SSL; /* opaque, never allocated without OpenSSL */
#endif

enum transport { T_TCP, T_UNIX, T_UDP };
enum cstate { C_RETRY, C_CONNECTING, C_HANDSHAKE, C_ACTIVE };
/* P_RAMP: every connection does ONE request, then waits (barrier), so that
 *         a server whose accept loop starves under load still gets all N
 *         connections before the load starts.  Churn has no barrier.
 * P_WARM: full load, not counted.  P_MEASURE: counted.  P_DRAIN: see drain(). */
enum phase { P_RAMP, P_WARM, P_MEASURE, P_DRAIN };

#define NS_PER_SEC 1000000000ULL
#define RETRY_DELAY_NS (10ULL * 1000000ULL) /* reconnect back-off */
#define STALL_NS (1ULL * NS_PER_SEC)        /* "stalled" threshold at end */
#define DRAIN_NS (500ULL * 1000000ULL)     /* max wait for replies at the end */
#define RBUF_SIZE 65536
#define MAX_EVENTS 1024

/* ---------------------------------------------------------------- config */

struct config {
    enum transport transport;
    const char *target;
    int conns;
    int depth;
    int churn;
    size_t size;
    double duration;
    double warmup;
    double ramp_timeout;
    double udp_timeout_ms;
    int tls;
};

static struct config cfg = {
    .transport = T_TCP,
    .target = NULL,
    .conns = 1,
    .depth = 1,
    .churn = 0,
    .size = 64,
    .duration = 2.0,
    .warmup = 0.5,
    .ramp_timeout = 10.0,
    .udp_timeout_ms = 200.0,
    .tls = 0,
};

static struct sockaddr_storage peer;
static socklen_t peer_len;

/* ------------------------------------------------------------- counters */

struct counters {
    uint64_t requests;        /* verified replies inside the window */
    uint64_t total_requests;  /* verified replies overall */
    uint64_t mismatches;      /* reply differs from what was sent */
    uint64_t unexpected_eof;  /* server closed with requests outstanding */
    uint64_t io_errors;       /* ECONNRESET, EPIPE, ECONNREFUSED (UDP) ... */
    uint64_t connect_errors;  /* connect() failed (not EAGAIN) */
    uint64_t connect_retries; /* EAGAIN on connect (unix backlog full) */
    uint64_t connects;        /* successful connects */
    uint64_t udp_retries;     /* datagrams re-sent after a timeout */
    uint64_t udp_stale;       /* late duplicate replies to re-sent datagrams */
    uint64_t handshakes;      /* TLS handshakes completed (overall) */
    uint64_t handshake_errors; /* TLS handshakes that failed */
};

static struct counters ctr;

/* ------------------------------------------------------------ histogram */

/* Log-linear histogram: values < 64 exact, then 64 sub-buckets per power
 * of two (about 1.5 % relative precision).  Values are microseconds. */
#define SUB_BITS 6
#define SUB_COUNT (1 << SUB_BITS)
#define N_BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

static uint64_t hist[N_BUCKETS];
static uint64_t hist_count;
static uint64_t lat_max;
static double lat_sum;

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB_COUNT)
        return (unsigned)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;
    return (unsigned)(shift * SUB_COUNT + (int)(v >> shift));
}

static uint64_t bucket_value(unsigned idx)
{
    if (idx < 2 * SUB_COUNT)
        return idx;
    unsigned shift = idx / SUB_COUNT - 1;
    uint64_t sub = idx - shift * SUB_COUNT;
    uint64_t low = sub << shift;
    return low + (((uint64_t)1 << shift) - 1) / 2;
}

static void hist_record(uint64_t us)
{
    hist[bucket_of(us)]++;
    hist_count++;
    lat_sum += (double)us;
    if (us > lat_max)
        lat_max = us;
}

static uint64_t hist_percentile(double p)
{
    if (hist_count == 0)
        return 0;
    uint64_t target = (uint64_t)(p * (double)hist_count + 0.999999);
    if (target < 1)
        target = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < N_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= target) {
            uint64_t v = bucket_value(i);
            return v > lat_max ? lat_max : v;
        }
    }
    return lat_max;
}

/* ---------------------------------------------------------- connections */

struct conn {
    int fd;
    uint32_t id;
    uint32_t gen;       /* bumped on every new socket: guards stale events */
    enum cstate state;
    int want_out;       /* EPOLLOUT currently registered */
    int batch_active;   /* a batch is outstanding */
    int done_first;     /* completed at least one request */
    uint64_t seq;       /* next message sequence number */
    char *buf;          /* current batch: depth messages of size bytes */
    size_t len, wpos, rpos;
    uint64_t t_start;   /* batch sent (churn: connect started) */
    uint64_t t_resend;  /* UDP: last (re)send */
    uint64_t retry_at;  /* C_RETRY: when to reconnect */
    SSL *ssl;           /* --tls: the connection's TLS state */
};

static struct conn *conns;
static int epfd = -1;
static enum phase phase = P_RAMP;
static int running = 1;
static uint64_t now_ns_cache;
static int first_done_count;
static int pending_retries;
static char rbuf[RBUF_SIZE];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* Write message number `seq` of connection `id` into dst (exactly `size`
 * bytes, the last one '\n', no other newline). */
static void fill_msg(char *dst, size_t size, uint32_t id, uint64_t seq)
{
    char head[48];
    int n = snprintf(head, sizeof head, "%x:%llu:", id, (unsigned long long)seq);
    size_t body = size - 1;
    size_t h = (size_t)n < body ? (size_t)n : body;
    memcpy(dst, head, h);
    for (size_t j = h; j < body; j++)
        dst[j] = (char)('a' + (char)((seq + j) % 26));
    dst[body] = '\n';
}

static void ep_set(struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = ((uint64_t)c->gen << 32) | c->id;
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0 && op != EPOLL_CTL_DEL) {
        perror("epoll_ctl");
        exit(1);
    }
}

#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;

static int tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx)
        return -1;
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return 0;
}

/* Send close_notify (once, without waiting for the peer's) and free. */
static void tls_free(struct conn *c, int clean)
{
    if (clean)
        SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    c->ssl = NULL;
}
#else
static int tls_init(void) { return -1; }
static void tls_free(struct conn *c, int clean) { (void)clean; c->ssl = NULL; }
#endif

/* Close the socket; `clean` (TLS): say close_notify first. */
static void conn_close_tls(struct conn *c, int clean)
{
    if (c->ssl)
        tls_free(c, clean);
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->want_out = 0;
    c->batch_active = 0;
}

static void conn_close(struct conn *c)
{
    conn_close_tls(c, 0);
}

static void conn_schedule_retry(struct conn *c, uint64_t delay)
{
    conn_close(c);
    c->state = C_RETRY;
    c->retry_at = now_ns_cache + delay;
    pending_retries++;
}

/* An error on a connection: count it, drop the socket, reconnect soon. */
static void conn_fail(struct conn *c, uint64_t *counter)
{
    (*counter)++;
    conn_schedule_retry(c, RETRY_DELAY_NS);
}

static void record_completion(struct conn *c, uint64_t n)
{
    ctr.total_requests += n;
    if (!c->done_first) {
        c->done_first = 1;
        first_done_count++;
    }
    if (phase == P_MEASURE) {
        uint64_t us = (now_ns_cache - c->t_start) / 1000;
        ctr.requests += n;
        for (uint64_t i = 0; i < n; i++)
            hist_record(us);
    }
}

static void want_out(struct conn *c, int on)
{
    if (c->want_out != on) {
        c->want_out = on;
        ep_set(c, on ? EPOLLIN | EPOLLOUT : EPOLLIN, EPOLL_CTL_MOD);
    }
}

#ifdef LOADGEN_TLS
static void tls_flush(struct conn *c)
{
    while (c->wpos < c->len) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->buf + c->wpos, (int)(c->len - c->wpos));
        if (n > 0) {
            c->wpos += (size_t)n;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_WRITE) {
            want_out(c, 1);
            return;
        }
        if (err == SSL_ERROR_WANT_READ)
            return; /* resumes on the next EPOLLIN (stream_read retries the write) */
        conn_fail(c, &ctr.io_errors);
        return;
    }
    want_out(c, 0);
}
#endif

static void stream_flush(struct conn *c)
{
#ifdef LOADGEN_TLS
    if (c->ssl) {
        tls_flush(c);
        return;
    }
#endif
    while (c->wpos < c->len) {
        ssize_t n = send(c->fd, c->buf + c->wpos, c->len - c->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->wpos += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_out(c, 1);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        conn_fail(c, &ctr.io_errors);
        return;
    }
    want_out(c, 0);
}

static void batch_start(struct conn *c)
{
    int depth = cfg.churn ? 1 : cfg.depth;
    for (int k = 0; k < depth; k++)
        fill_msg(c->buf + (size_t)k * cfg.size, cfg.size, c->id, c->seq++);
    c->len = (size_t)depth * cfg.size;
    c->wpos = c->rpos = 0;
    c->batch_active = 1;
    if (!cfg.churn)
        c->t_start = now_ns_cache;
    if (cfg.transport == T_UDP) {
        c->t_resend = now_ns_cache;
        if (send(c->fd, c->buf, c->len, MSG_NOSIGNAL) < 0 && errno != EAGAIN &&
            errno != EWOULDBLOCK && errno != ECONNREFUSED)
            ctr.io_errors++;
        return;
    }
    stream_flush(c);
}

#ifdef LOADGEN_TLS
/* Drive the handshake; on completion the connection starts its first batch. */
static void tls_handshake(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        ctr.handshakes++;
        c->state = C_ACTIVE;
        want_out(c, 0);
        batch_start(c);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
        want_out(c, 0);
        return;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        want_out(c, 1);
        return;
    }
    conn_fail(c, &ctr.handshake_errors);
}
#endif

/* The socket is connected: start TLS (--tls) or the first batch. */
static void conn_ready(struct conn *c)
{
#ifdef LOADGEN_TLS
    if (cfg.tls) {
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
            conn_fail(c, &ctr.handshake_errors);
            return;
        }
        SSL_set_connect_state(c->ssl);
        c->state = C_HANDSHAKE;
        tls_handshake(c);
        return;
    }
#endif
    c->state = C_ACTIVE;
    batch_start(c);
}

static void conn_open(struct conn *c)
{
    int type = cfg.transport == T_UDP ? SOCK_DGRAM : SOCK_STREAM;
    c->gen++;
    c->fd = socket(peer.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_fail(c, &ctr.connect_errors);
        return;
    }
    if (cfg.transport == T_TCP) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (cfg.churn)
        c->t_start = now_ns_cache;
    int r = connect(c->fd, (struct sockaddr *)&peer, peer_len);
    if (r == 0) {
        ctr.connects++;
        ep_set(c, EPOLLIN, EPOLL_CTL_ADD);
        conn_ready(c);
    } else if (errno == EINPROGRESS) {
        c->state = C_CONNECTING;
        ep_set(c, EPOLLOUT, EPOLL_CTL_ADD);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        ctr.connect_retries++;
        conn_schedule_retry(c, RETRY_DELAY_NS);
    } else {
        conn_fail(c, &ctr.connect_errors);
    }
}

static void on_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        conn_fail(c, &ctr.connect_errors);
        return;
    }
    ctr.connects++;
    ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
    conn_ready(c);
}

/* Check `got` reply bytes in rbuf; returns 0 once the socket was replaced/closed. */
static int stream_consume(struct conn *c, size_t got)
{
    if (!c->batch_active || c->rpos + got > c->wpos ||
        memcmp(rbuf, c->buf + c->rpos, got) != 0) {
        conn_fail(c, &ctr.mismatches);
        return 0;
    }
    size_t before = c->rpos / cfg.size;
    c->rpos += got;
    size_t after = c->rpos / cfg.size;
    if (after > before)
        record_completion(c, after - before);
    if (c->rpos < c->len)
        return 1;
    c->batch_active = 0;
    if (cfg.churn) {
        conn_close_tls(c, 1);
        if (running)
            conn_open(c);
        return 0;
    } else if (running && phase != P_RAMP) {
        batch_start(c);
    }
    return c->fd >= 0;
}

#ifdef LOADGEN_TLS
/* Read every decrypted byte available: level-triggered epoll does not see
 * plaintext already inside OpenSSL, so read until it wants the socket. */
static void tls_read(struct conn *c)
{
    uint32_t gen = c->gen;
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, rbuf, (int)sizeof rbuf);
        if (n > 0) {
            if (!stream_consume(c, (size_t)n) || c->gen != gen)
                return;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ) {
            if (c->wpos < c->len)
                tls_flush(c); /* a write that waited for a read */
            return;
        }
        if (err == SSL_ERROR_WANT_WRITE) {
            want_out(c, 1);
            return;
        }
        if (err == SSL_ERROR_ZERO_RETURN ||
            (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0))
            conn_fail(c, &ctr.unexpected_eof);
        else
            conn_fail(c, &ctr.io_errors);
        return;
    }
}
#endif

static void stream_read(struct conn *c)
{
#ifdef LOADGEN_TLS
    if (c->ssl) {
        tls_read(c);
        return;
    }
#endif
    ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_fail(c, &ctr.io_errors);
        return;
    }
    if (n == 0) {
        conn_fail(c, &ctr.unexpected_eof);
        return;
    }
    stream_consume(c, (size_t)n);
}

/* Parse "<hex id>:<seq>:" at the start of a UDP reply. */
static int parse_head(const char *p, size_t n, uint32_t *id, uint64_t *seq)
{
    char tmp[48];
    size_t m = n < sizeof tmp - 1 ? n : sizeof tmp - 1;
    memcpy(tmp, p, m);
    tmp[m] = 0;
    unsigned int a;
    unsigned long long b;
    if (sscanf(tmp, "%x:%llu:", &a, &b) != 2)
        return 0;
    *id = a;
    *seq = b;
    return 1;
}

static void udp_read(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            ctr.io_errors++; /* e.g. ECONNREFUSED: nobody listening */
            return;
        }
        size_t got = (size_t)n;
        if (c->batch_active && got == c->len && memcmp(rbuf, c->buf, got) == 0) {
            c->batch_active = 0;
            record_completion(c, 1);
            if (running && phase != P_RAMP)
                batch_start(c);
            continue;
        }
        /* A late reply to a datagram we re-sent (already completed)? */
        uint32_t id;
        uint64_t seq;
        char expect[RBUF_SIZE];
        if (got == cfg.size && got <= sizeof expect && parse_head(rbuf, got, &id, &seq) &&
            id == c->id && seq + 1 < c->seq) {
            fill_msg(expect, cfg.size, id, seq);
            if (memcmp(expect, rbuf, got) == 0) {
                ctr.udp_stale++;
                continue;
            }
        }
        ctr.mismatches++;
    }
}

static void udp_check_timeouts(uint64_t timeout_ns)
{
    for (int i = 0; i < cfg.conns; i++) {
        struct conn *c = &conns[i];
        if (c->fd < 0 || !c->batch_active || now_ns_cache - c->t_resend < timeout_ns)
            continue;
        ctr.udp_retries++;
        c->t_resend = now_ns_cache;
        if (send(c->fd, c->buf, c->len, MSG_NOSIGNAL) < 0 && errno != EAGAIN &&
            errno != EWOULDBLOCK && errno != ECONNREFUSED)
            ctr.io_errors++;
    }
}

static void run_retries(void)
{
    int still = 0;
    for (int i = 0; i < cfg.conns; i++) {
        struct conn *c = &conns[i];
        if (c->state != C_RETRY)
            continue;
        if (now_ns_cache >= c->retry_at) {
            pending_retries--;
            conn_open(c); /* may re-schedule itself (pending_retries++) */
        } else {
            still = 1;
        }
    }
    if (!still && pending_retries < 0)
        pending_retries = 0; /* defensive: never loop on a negative count */
}

/* After the window: send nothing new, but read the replies still in flight
 * (for at most `deadline`) so that closing does not reset connections that
 * have unread data, which would make servers log spurious ECONNRESETs. */
static void drain(uint64_t deadline, struct epoll_event *events)
{
    for (;;) {
        int outstanding = 0;
        for (int i = 0; i < cfg.conns; i++) {
            struct conn *c = &conns[i];
            if (c->fd >= 0 && c->batch_active && c->state == C_ACTIVE) {
                outstanding = 1;
                break;
            }
        }
        now_ns_cache = now_ns();
        if (!outstanding || now_ns_cache >= deadline)
            return;
        int n = epoll_wait(epfd, events, MAX_EVENTS, 10);
        now_ns_cache = now_ns();
        for (int i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)(events[i].data.u64 & 0xffffffffu);
            uint32_t gen = (uint32_t)(events[i].data.u64 >> 32);
            struct conn *c = &conns[idx];
            if (c->gen != gen || c->fd < 0 || c->state != C_ACTIVE)
                continue;
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                stream_read(c);
            if (c->fd >= 0 && c->gen == gen && (events[i].events & EPOLLOUT) && c->want_out)
                stream_flush(c);
        }
    }
}

/* -------------------------------------------------------- setup / output */

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT)\n"
            "          [-c CONNS] [-d DEPTH] [--churn] [-s SIZE] [-t SECS]\n"
            "          [-w WARMUP_SECS] [--ramp-timeout SECS] [--udp-timeout MS]\n"
            "  -c, --conns N        connections / UDP sockets / churn concurrency (1)\n"
            "  -d, --depth D        lines per write, then wait for D replies (1)\n"
            "      --churn          connect, 1 line, reply, close, repeat\n"
            "  -s, --size B         message size incl. newline (64)\n"
            "  -t, --duration S     measured seconds (2)\n"
            "  -w, --warmup S       unmeasured full-load seconds first (0.5)\n"
            "      --ramp-timeout S bound of the connect barrier (10)\n"
            "      --udp-timeout MS re-send an unanswered datagram after MS (200)\n"
            "      --tls            TLS 1.3 over --tcp/--unix (needs a -DLOADGEN_TLS build)\n"
            "      --version        print the version and 'tls' when built with TLS\n"
            "Prints MARK start / MARK end, then one JSON object.\n",
            prog);
}

static int resolve(void)
{
    memset(&peer, 0, sizeof peer);
    if (cfg.transport == T_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&peer;
        if (strlen(cfg.target) >= sizeof un->sun_path) {
            fprintf(stderr, "unix path too long\n");
            return -1;
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, cfg.target);
        peer_len = sizeof *un;
        return 0;
    }
    char host[256];
    const char *colon = strrchr(cfg.target, ':');
    if (!colon || colon == cfg.target) {
        fprintf(stderr, "target must be HOST:PORT\n");
        return -1;
    }
    size_t hl = (size_t)(colon - cfg.target);
    if (hl >= sizeof host)
        return -1;
    memcpy(host, cfg.target, hl);
    host[hl] = 0;
    char *h = host;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h[hl - 1] = 0;
        h++;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = cfg.transport == T_UDP ? SOCK_DGRAM : SOCK_STREAM;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0 || !res) {
        fprintf(stderr, "getaddrinfo(%s): %s\n", cfg.target, gai_strerror(rc));
        return -1;
    }
    memcpy(&peer, res->ai_addr, res->ai_addrlen);
    peer_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void print_json(double seconds, double ramp_seconds, int ramp_incomplete, int stalled)
{
    static const char *tnames[] = {"tcp", "unix", "udp"};
    uint64_t errors = ctr.mismatches + ctr.unexpected_eof + ctr.io_errors + ctr.connect_errors +
                      ctr.handshake_errors;
    double rps = seconds > 0 ? (double)ctr.requests / seconds : 0.0;
    printf("{\"transport\": \"%s\", \"target\": \"%s\", \"conns\": %d, \"depth\": %d, "
           "\"churn\": %s, \"tls\": %s, \"handshakes\": %llu, \"handshake_errors\": %llu, "
           "\"size\": %zu, "
           "\"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, \"errors\": %llu, "
           "\"mismatches\": %llu, \"unexpected_eof\": %llu, \"io_errors\": %llu, "
           "\"connect_errors\": %llu, \"connect_retries\": %llu, \"connects\": %llu, "
           "\"udp_retries\": %llu, \"udp_stale\": %llu, \"total_requests\": %llu, "
           "\"ramp_seconds\": %.3f, \"ramp_incomplete\": %d, \"stalled\": %d, "
           "\"latency_us\": {\"p50\": %llu, \"p90\": %llu, \"p99\": %llu, "
           "\"p999\": %llu, \"max\": %llu, \"mean\": %.1f}}\n",
           tnames[cfg.transport], cfg.target, cfg.conns, cfg.depth,
           cfg.churn ? "true" : "false", cfg.tls ? "true" : "false",
           (unsigned long long)ctr.handshakes, (unsigned long long)ctr.handshake_errors, cfg.size,
           (unsigned long long)ctr.requests, seconds, rps, (unsigned long long)errors,
           (unsigned long long)ctr.mismatches, (unsigned long long)ctr.unexpected_eof,
           (unsigned long long)ctr.io_errors, (unsigned long long)ctr.connect_errors,
           (unsigned long long)ctr.connect_retries, (unsigned long long)ctr.connects,
           (unsigned long long)ctr.udp_retries, (unsigned long long)ctr.udp_stale,
           (unsigned long long)ctr.total_requests, ramp_seconds, ramp_incomplete, stalled,
           (unsigned long long)hist_percentile(0.50), (unsigned long long)hist_percentile(0.90),
           (unsigned long long)hist_percentile(0.99), (unsigned long long)hist_percentile(0.999),
           (unsigned long long)lat_max, hist_count ? lat_sum / (double)hist_count : 0.0);
    fflush(stdout);
}

static int parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tcp", required_argument, 0, 'T'},
        {"unix", required_argument, 0, 'U'},
        {"udp", required_argument, 0, 'D'},
        {"conns", required_argument, 0, 'c'},
        {"depth", required_argument, 0, 'd'},
        {"churn", no_argument, 0, 'C'},
        {"size", required_argument, 0, 's'},
        {"duration", required_argument, 0, 't'},
        {"warmup", required_argument, 0, 'w'},
        {"ramp-timeout", required_argument, 0, 'R'},
        {"udp-timeout", required_argument, 0, 'O'},
        {"tls", no_argument, 0, 'S'},
        {"version", no_argument, 0, 'V'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:d:s:t:w:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'T': cfg.transport = T_TCP; cfg.target = optarg; break;
        case 'U': cfg.transport = T_UNIX; cfg.target = optarg; break;
        case 'D': cfg.transport = T_UDP; cfg.target = optarg; break;
        case 'c': cfg.conns = atoi(optarg); break;
        case 'd': cfg.depth = atoi(optarg); break;
        case 'C': cfg.churn = 1; break;
        case 's': cfg.size = (size_t)atol(optarg); break;
        case 't': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'R': cfg.ramp_timeout = atof(optarg); break;
        case 'O': cfg.udp_timeout_ms = atof(optarg); break;
        case 'S': cfg.tls = 1; break;
        case 'V': printf("loadgen 2%s\n", HAVE_TLS ? " tls" : ""); exit(0);
        case 'h': usage(argv[0]); exit(0);
        default: return -1;
        }
    }
    if (!cfg.target || cfg.conns < 1 || cfg.conns > 100000 || cfg.depth < 1 ||
        cfg.depth > 4096 || cfg.size < 2 || cfg.size > 60000 || cfg.duration <= 0 ||
        cfg.duration > 3600 || cfg.warmup < 0 || cfg.ramp_timeout < 0 ||
        cfg.udp_timeout_ms <= 0)
        return -1;
    if (cfg.transport == T_UDP && (cfg.churn || cfg.depth != 1)) {
        fprintf(stderr, "UDP supports ping-pong only (no --churn, -d 1)\n");
        return -1;
    }
    if (cfg.tls && cfg.transport == T_UDP) {
        fprintf(stderr, "--tls needs a stream transport (--tcp or --unix)\n");
        return -1;
    }
    if (cfg.tls && !HAVE_TLS) {
        fprintf(stderr, "--tls: this loadgen was built without OpenSSL (-DLOADGEN_TLS)\n");
        return -1;
    }
    if (cfg.churn)
        cfg.depth = 1;
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0) {
        usage(argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (resolve() < 0)
        return 1;
    if (cfg.tls && tls_init() < 0) {
        fprintf(stderr, "TLS setup failed\n");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        return 1;
    }
    conns = calloc((size_t)cfg.conns, sizeof *conns);
    if (!conns)
        return 1;
    for (int i = 0; i < cfg.conns; i++) {
        conns[i].fd = -1;
        conns[i].id = (uint32_t)i;
        conns[i].buf = malloc(cfg.size * (size_t)cfg.depth);
        if (!conns[i].buf)
            return 1;
    }

    const uint64_t t0 = now_ns();
    const uint64_t ramp_deadline = t0 + (uint64_t)(cfg.ramp_timeout * NS_PER_SEC);
    const uint64_t udp_timeout_ns = (uint64_t)(cfg.udp_timeout_ms * 1e6);
    uint64_t ramp_end = 0, warm_end = 0, measure_start = 0, measure_end = UINT64_MAX;
    int ramp_incomplete = 0;

    now_ns_cache = t0;
    for (int i = 0; i < cfg.conns; i++)
        conn_open(&conns[i]);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        now_ns_cache = now_ns();
        if (phase == P_RAMP) {
            int all_done = cfg.churn ? 1 : first_done_count >= cfg.conns;
            if (all_done || now_ns_cache >= ramp_deadline) {
                ramp_incomplete = cfg.churn ? 0 : cfg.conns - first_done_count;
                ramp_end = now_ns_cache;
                warm_end = ramp_end + (uint64_t)(cfg.warmup * NS_PER_SEC);
                phase = P_WARM;
                /* Release the barrier: every idle connection starts working. */
                for (int i = 0; i < cfg.conns; i++) {
                    struct conn *c = &conns[i];
                    if (c->fd >= 0 && c->state == C_ACTIVE && !c->batch_active)
                        batch_start(c);
                }
                continue;
            }
        } else if (phase == P_WARM) {
            if (now_ns_cache >= warm_end) {
                phase = P_MEASURE;
                measure_start = now_ns_cache;
                measure_end = measure_start + (uint64_t)(cfg.duration * NS_PER_SEC);
                printf("MARK start\n");
                fflush(stdout);
            }
        } else if (now_ns_cache >= measure_end) {
            break;
        }

        /* Sleep until the next thing we must do ourselves, at most 10 ms. */
        int timeout_ms = 10;
        if (phase == P_MEASURE) {
            uint64_t left = measure_end - now_ns_cache;
            if (left / 1000000 < (uint64_t)timeout_ms)
                timeout_ms = (int)(left / 1000000) + 1;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        now_ns_cache = now_ns();
        for (int i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)(events[i].data.u64 & 0xffffffffu);
            uint32_t gen = (uint32_t)(events[i].data.u64 >> 32);
            struct conn *c = &conns[idx];
            if (c->gen != gen || c->fd < 0)
                continue; /* event for a socket we already replaced */
            uint32_t ev = events[i].events;
            if (c->state == C_CONNECTING) {
                on_connected(c);
                continue;
            }
#ifdef LOADGEN_TLS
            if (c->state == C_HANDSHAKE) {
                tls_handshake(c);
                continue;
            }
#endif
            if (cfg.transport == T_UDP) {
                udp_read(c);
                continue;
            }
            if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
                stream_read(c);
            if (c->fd >= 0 && c->gen == gen && (ev & EPOLLOUT) && c->want_out)
                stream_flush(c);
        }
        if (cfg.transport == T_UDP)
            udp_check_timeouts(udp_timeout_ns);
        if (pending_retries > 0)
            run_retries();
    }

    printf("MARK end\n");
    fflush(stdout);
    running = 0;
    phase = P_DRAIN;
    const uint64_t t_end = now_ns_cache;
    int stalled = 0;
    for (int i = 0; i < cfg.conns; i++) {
        struct conn *c = &conns[i];
        if (c->fd >= 0 && c->batch_active && t_end - c->t_start > STALL_NS)
            stalled++;
    }
    print_json((double)(t_end - measure_start) / NS_PER_SEC,
               (double)(ramp_end - t0) / NS_PER_SEC, ramp_incomplete, stalled);
    if (cfg.transport != T_UDP)
        drain(t_end + DRAIN_NS, events);
    for (int i = 0; i < cfg.conns; i++) {
        conn_close_tls(&conns[i], 1);
        free(conns[i].buf);
    }
    free(conns);
    close(epfd);
#ifdef LOADGEN_TLS
    if (tls_ctx)
        SSL_CTX_free(tls_ctx);
#endif
    return 0;
}
