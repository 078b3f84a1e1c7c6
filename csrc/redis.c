/* The Redis shared-state backend (backend.h): shared data and queues that every process
 * and machine using one Redis server and one prefix share.
 *
 * Client: hiredis, only for connecting (redisConnectWithTimeout) and for parsing replies
 * (the context's redisReader). Commands are written here in RESP into a per-thread buffer
 * and sent and read with non-blocking calls under poll, against one deadline per operation:
 * an operation never blocks its thread longer than the configured timeout, connecting
 * included, whatever the size of the value.
 *
 * Key layout (P = prefix, H = the scope's bytes in hex, a scope being (namespace, vm_id)):
 *   P:d:H:<key>   hash {v: value, c: cas}: one shared-data entry (TTL: PEXPIREAT)
 *   P:b:H         bytes the scope holds (keys + values), against the cap
 *   P:x:H         sorted set: keys of the scope with a TTL, scored by expiry (ms)
 *   P:t:H         hash: those keys' charged bytes (an expired entry's size is gone with it)
 *   P:cas         the cas counter (INCR, 0 skipped, taken modulo 2^32)
 *   P:qn:H        hash: queue name -> id          P:qseq   the queue id counter
 *   P:q:<id>      list: the queue's items          P:qb:<id> its bytes
 *   P:qo:<id>     its owner "<instance hex>:<registration>" ("" once released)
 *   P:n:<instance hex>   the pub/sub channel of one process's backend
 * Every write is one Lua script (EVALSHA; EVAL when the server answers NOSCRIPT), so CAS,
 * the byte counter and the TTL index change together, atomically. Expired entries give
 * their bytes back when a write to their scope next runs: each write script first deletes
 * up to 64 entries whose expiry has passed (all of them when the write would otherwise
 * exceed the cap) and always the entry it writes, if expired. Redis deletes expired hashes
 * on its own meanwhile; reads never see them.
 *
 * Threads: each thread has its own connection (a pthread key per backend), so the hot path
 * takes no lock. A connection that fails is dropped; the next operation reconnects. A
 * timeout or a failed connect puts the whole backend in backoff (25 ms doubling to 1 s):
 * until it ends every operation answers INTERNAL_FAILURE at once, without touching the
 * network, and when it ends one thread probes while the others keep answering at once.
 * Every such answer is counted in head.unavailable.
 *
 * Notifications: q_enqueue's script publishes the queue id on the owner process's channel.
 * One subscriber thread per backend (per process) listens on its own channel and posts
 * one on_queue_ready to the local owner's dispatcher per message. Messages published while
 * it is not subscribed are lost by Redis, so after every (re)subscription it posts one
 * notification per item waiting in each queue this process still owns: nothing waits
 * forever, and an item enqueued while the subscription comes back may be announced
 * twice (at least once, exactly once otherwise). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifndef PW_HAVE_HIREDIS

int pw_redis_available(void) { return 0; }

pw_backend *pw_redis_open(const char *url, uint64_t timeout_us, const uint8_t *prefix,
                          size_t prefix_len, uint64_t max_bytes, uint64_t default_ttl_ms,
                          char *err, size_t err_cap) {
    (void)url, (void)timeout_us, (void)prefix, (void)prefix_len, (void)max_bytes;
    (void)default_ttl_ms;
    snprintf(err, err_cap,
             "this build has no Redis support: install libhiredis-dev and reinstall pyproxywasm");
    return NULL;
}

uint64_t pw_redis_stat(pw_backend *b, int which) {
    (void)b, (void)which;
    return 0;
}

#else

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define REAP_BATCH "64"
#define QUEUE_ITEMS_MAX QUEUE_MAX_ITEMS    /* as the in-process store */
#define QUEUE_BYTES_MAX (64ull << 20)      /* per queue, as the in-process store */
#define QUEUE_ID_MAX 0xffffffu             /* ids must fit below the slot bits */
#define BACKOFF_MIN_NS (25ull * 1000000)
#define BACKOFF_MAX_NS (1000ull * 1000000)
#define SUB_PING_NS (1000ull * 1000000)    /* the subscriber pings when idle this long */
#define SUB_PONG_NS (5000ull * 1000000)    /* and reconnects when no answer came in this */
#define OWNER_BUCKETS 256
#define OPEN_TIMEOUT_NS (2000ull * 1000000) /* opening's own budget, at least */

/* ---- scripts ------------------------------------------------------------------------ */
/* Numbers given to redis.call go as decimal strings (N): the server would format a Lua
 * number itself, and Redis 7.2+ writes the shortest form (4e+09), which INCRBY, PEXPIREAT
 * and our cas parsing would not take.
 * Shared-data scripts share a preamble. KEYS[1] entry, [2] bytes, [3] expiry index, [4]
 * sizes of expiring keys; the last ARGV is the entry prefix "P:d:H:" for reaping. */
#define PRE                                                                               \
    "if redis.replicate_commands then redis.replicate_commands() end\n"                  \
    "local DP = ARGV[#ARGV]\n"                                                            \
    "local function N(x) return string.format('%d', x) end\n"                            \
    "local now\n"                                                                         \
    "local function clock() if not now then local t = redis.call('TIME') "               \
    "now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end return now end\n" \
    "local function drop(k) redis.call('DEL', DP .. k) "                                  \
    "redis.call('DECRBY', KEYS[2], N(tonumber(redis.call('HGET', KEYS[4], k) or '0'))) "     \
    "redis.call('HDEL', KEYS[4], k) redis.call('ZREM', KEYS[3], k) end\n"                 \
    "local function reap(limit) if redis.call('EXISTS', KEYS[3]) == 0 then return end "  \
    "for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', "                    \
    "string.format('(%d', clock()), 'LIMIT', '0', N(limit))) do drop(k) end end\n"             \
    "local function settle(k) reap(" REAP_BATCH ") local s = redis.call('ZSCORE', KEYS[3], k) " \
    "if s and tonumber(s) < clock() then drop(k) end end\n"

/* set: KEYS[5] cas counter; ARGV key, value, cas, max bytes, default ttl ms, DP.
 * Returns the new cas (> 0) or -status. */
static const char S_SET_TEXT[] =
    PRE
    "local key, val, cas = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "settle(key)\n"
    "local cur = redis.call('HGET', KEYS[1], 'c')\n"
    "if cur and cas ~= 0 and tonumber(cur) ~= cas then return -8 end\n"
    "local size = #key + #val\n"
    "local delta = size\n"
    "if cur then delta = #val - redis.call('HSTRLEN', KEYS[1], 'v') end\n"
    "local max = tonumber(ARGV[4])\n"
    "if max > 0 and delta > 0 then\n"
    "  local used = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "  if used + delta > max then reap(-1) used = tonumber(redis.call('GET', KEYS[2]) or '0') end\n"
    "  if used + delta > max then return -10 end\n"
    "end\n"
    "local c = redis.call('INCR', KEYS[5]) % 4294967296\n"
    "if c == 0 then c = redis.call('INCR', KEYS[5]) % 4294967296 end\n"
    "redis.call('HSET', KEYS[1], 'v', val, 'c', N(c))\n"
    "redis.call('INCRBY', KEYS[2], N(delta))\n"
    "local ttl = tonumber(ARGV[5])\n"
    "if not cur and ttl > 0 then\n"
    "  local at = clock() + ttl\n"
    "  redis.call('PEXPIREAT', KEYS[1], N(at))\n"
    "  redis.call('ZADD', KEYS[3], N(at), key)\n"
    "  redis.call('HSET', KEYS[4], key, N(size))\n"
    "elseif cur and redis.call('HEXISTS', KEYS[4], key) == 1 then\n"
    "  redis.call('HSET', KEYS[4], key, N(size))\n"
    "end\n"
    "return c\n";

/* del: ARGV key, cas, DP. Returns 0 or -status. */
static const char S_DEL_TEXT[] =
    PRE
    "local key, cas = ARGV[1], tonumber(ARGV[2])\n"
    "settle(key)\n"
    "local cur = redis.call('HGET', KEYS[1], 'c')\n"
    "if not cur then return -1 end\n"
    "if cas ~= 0 and tonumber(cur) ~= cas then return -8 end\n"
    "redis.call('DECRBY', KEYS[2], N(#key + redis.call('HSTRLEN', KEYS[1], 'v')))\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('ZREM', KEYS[3], key)\n"
    "redis.call('HDEL', KEYS[4], key)\n"
    "return 0\n";

/* expire: ARGV key, ttl ms (0: never), DP. Returns 0 or -status. */
static const char S_EXPIRE_TEXT[] =
    PRE
    "local key, ttl = ARGV[1], tonumber(ARGV[2])\n"
    "settle(key)\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end\n"
    "if ttl == 0 then\n"
    "  redis.call('PERSIST', KEYS[1])\n"
    "  redis.call('ZREM', KEYS[3], key)\n"
    "  redis.call('HDEL', KEYS[4], key)\n"
    "  return 0\n"
    "end\n"
    "local at = clock() + ttl\n"
    "redis.call('PEXPIREAT', KEYS[1], N(at))\n"
    "redis.call('ZADD', KEYS[3], N(at), key)\n"
    "redis.call('HSET', KEYS[4], key, N(#key + redis.call('HSTRLEN', KEYS[1], 'v')))\n"
    "return 0\n";

/* register: KEYS names hash, id counter; ARGV name, may_create, owner, "P:qo:", max id.
 * Returns {id, created} or {-status, 0}. */
static const char S_QREG_TEXT[] =
    "local id = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "local created = 0\n"
    "if not id then\n"
    "  if ARGV[2] == '0' then return {-10, 0} end\n"
    "  local n = redis.call('INCR', KEYS[2])\n"
    "  if n > tonumber(ARGV[5]) then return {-10, 0} end\n"
    "  id = string.format('%d', n)\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], id)\n"
    "  created = 1\n"
    "end\n"
    "redis.call('SET', ARGV[4] .. id, ARGV[3])\n"
    "return {tonumber(id), created}\n";

/* enqueue: KEYS list, owner, bytes; ARGV item, max items, max bytes, "P:n:", id. */
static const char S_ENQ_TEXT[] =
    "local o = redis.call('GET', KEYS[2])\n"
    "if not o then return -1 end\n"
    "if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -10 end\n"
    "local b = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
    "if b + #ARGV[1] > tonumber(ARGV[3]) then return -10 end\n"
    "redis.call('RPUSH', KEYS[1], ARGV[1])\n"
    "redis.call('INCRBY', KEYS[3], string.format('%d', #ARGV[1]))\n"
    "if #o > 0 then redis.call('PUBLISH', ARGV[4] .. string.sub(o, 1, 16), ARGV[5]) end\n"
    "return 0\n";

/* dequeue: KEYS list, owner, bytes. Returns the item, or -status. */
static const char S_DEQ_TEXT[] =
    "local v = redis.call('LPOP', KEYS[1])\n"
    "if not v then\n"
    "  if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end\n"
    "  return -7\n"
    "end\n"
    "redis.call('DECRBY', KEYS[3], string.format('%d', #v))\n"
    "return v\n";

/* size: KEYS list, owner. Returns the length or -1. */
static const char S_QSIZE_TEXT[] =
    "if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end\n"
    "return redis.call('LLEN', KEYS[1])\n";

/* owned: KEYS owner, list; ARGV owner. The length if the owner is still ARGV[1], else -1. */
static const char S_OWNED_TEXT[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('LLEN', KEYS[2]) end\n"
    "return -1\n";

/* release: KEYS owner; ARGV owner. Nobody is notified any more if it was still ours. */
static const char S_RELEASE_TEXT[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], '') end\n"
    "return 0\n";

enum { S_SET, S_DEL, S_EXPIRE, S_QREG, S_ENQ, S_DEQ, S_QSIZE, S_OWNED, S_RELEASE, S_COUNT };
static const char *const script_text[S_COUNT] = {
    S_SET_TEXT, S_DEL_TEXT, S_EXPIRE_TEXT, S_QREG_TEXT, S_ENQ_TEXT,
    S_DEQ_TEXT, S_QSIZE_TEXT, S_OWNED_TEXT, S_RELEASE_TEXT};

/* ---- structures --------------------------------------------------------------------- */
struct rbackend;

/* One thread's connection to one backend's server. Used by its thread only; the backend
 * reaches it (list links, `b`) under tconn_lock, when it is made, at thread exit and when
 * the backend is destroyed. */
typedef struct tconn {
    struct rbackend *b; /* NULL once the backend is gone */
    struct tconn *next, *prev;
    redisContext *c;    /* NULL: not connected */
    pw_buf args, hdr;   /* the command being built (reused: no churn on the hot path) */
    uint32_t argc;
    int oom;
} tconn;

/* Who gets a queue's notifications in this process. */
typedef struct owner_ent {
    uint32_t id;
    uint64_t reg; /* this process's registration number, part of the owner string */
    pw_queue_owner o;
    struct owner_ent *next;
} owner_ent;

typedef struct rbackend {
    pw_backend head; /* first: the common head of backend.h */
    char ip[INET6_ADDRSTRLEN];
    int port, db;
    char *user, *pass;
    uint64_t timeout_ns;
    pw_buf prefix;
    char sha[S_COUNT][41];
    char inst[17]; /* this process's instance id, 16 hex digits */
    pthread_key_t key;
    tconn *conns; /* every thread's connection (tconn_lock) */
    _Atomic uint64_t down_until; /* monotonic ns; 0: not in backoff */
    _Atomic uint64_t backoff_ns;
    /* owners: written by registering threads, read by the subscriber */
    pthread_mutex_t owners_lock;
    owner_ent *owners[OWNER_BUCKETS];
    uint64_t reg_seq;
    /* the subscriber thread */
    pthread_t sub;
    int sub_started, stop_fd;
    _Atomic int stop;
    _Atomic uint64_t st_notified, st_dropped, st_subscribed, st_flushed, st_reconnects;
} rbackend;

/* Guards every tconn's links and `b` against thread exit racing backend destroy; held
 * only when a thread first uses a backend, when it exits, and in destroy. */
static pthread_mutex_t tconn_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- RESP building ------------------------------------------------------------------ */
static void put(tconn *t, const void *p, size_t n) {
    if (n && buf_append(&t->args, p, n)) t->oom = 1;
}

static void arg_head(tconn *t, size_t n) {
    char h[32];
    int l = snprintf(h, sizeof h, "$%zu\r\n", n);
    put(t, h, (size_t)l);
    t->argc++;
}

static void arg(tconn *t, const void *p, size_t n) {
    arg_head(t, n);
    put(t, p, n);
    put(t, "\r\n", 2);
}

static void arg_str(tconn *t, const char *s) { arg(t, s, strlen(s)); }

static void arg_u64(tconn *t, uint64_t v) {
    char s[24];
    int l = snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    arg(t, s, (size_t)l);
}

static void put_hex(tconn *t, const uint8_t *p, size_t n) {
    static const char hx[] = "0123456789abcdef";
    if (t->oom || buf_reserve(&t->args, t->args.len + 2 * n)) {
        t->oom = 1;
        return;
    }
    char *o = (char *)t->args.p + t->args.len;
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = hx[p[i] >> 4];
        o[2 * i + 1] = hx[p[i] & 15];
    }
    t->args.len += 2 * n;
}

/* "P:<kind>:H" then, when with_key, ":" and the key: one argument. */
static void arg_skey(tconn *t, rbackend *b, const char *kind, const pw_buf *scope,
                     const uint8_t *k, size_t kl, int with_key) {
    size_t n = b->prefix.len + 2 + strlen(kind) + 2 * scope->len + (with_key ? 1 + kl : 0);
    arg_head(t, n);
    put(t, b->prefix.p, b->prefix.len);
    put(t, ":", 1);
    put(t, kind, strlen(kind));
    put(t, ":", 1);
    put_hex(t, scope->p, scope->len);
    if (with_key) {
        put(t, ":", 1);
        put(t, k, kl);
    }
    put(t, "\r\n", 2);
}

/* "P:<kind><tail>" */
static void arg_pkey(tconn *t, rbackend *b, const char *kind, const char *tail) {
    size_t n = b->prefix.len + 1 + strlen(kind) + strlen(tail);
    arg_head(t, n);
    put(t, b->prefix.p, b->prefix.len);
    put(t, ":", 1);
    put(t, kind, strlen(kind));
    put(t, tail, strlen(tail));
    put(t, "\r\n", 2);
}

static void arg_qkey(tconn *t, rbackend *b, const char *kind, uint32_t id) {
    char tail[16];
    snprintf(tail, sizeof tail, "%u", id);
    arg_pkey(t, b, kind, tail);
}

static void cmd_begin(tconn *t) {
    buf_clear(&t->args);
    t->argc = 0;
    t->oom = 0;
}

/* ---- I/O against a deadline --------------------------------------------------------- */
enum { IO_OK = 0, IO_TIMEOUT, IO_DROPPED, IO_PROTOCOL, IO_OOM };

static int wait_fd(int fd, short ev, uint64_t deadline) {
    lock_yield(); /* this thread blocks: not with the embedding's lock (pw_set_lock_yield) */
    uint64_t now = now_ns();
    if (now >= deadline) return IO_TIMEOUT;
    uint64_t left = deadline - now;
    struct timespec ts = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
    struct pollfd p = {fd, ev, 0};
    int r = ppoll(&p, 1, &ts, NULL);
    if (r < 0) return errno == EINTR ? IO_OK : IO_DROPPED;
    if (r == 0) return IO_TIMEOUT;
    return IO_OK;
}

static int send_all(int fd, const uint8_t *a, size_t an, const uint8_t *b2, size_t bn,
                    uint64_t deadline) {
    size_t off = 0, total = an + bn;
    while (off < total) {
        struct iovec iov[2];
        int n = 0;
        if (off < an) iov[n++] = (struct iovec){(void *)(a + off), an - off};
        size_t boff = off > an ? off - an : 0;
        if (bn > boff) iov[n++] = (struct iovec){(void *)(b2 + boff), bn - boff};
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int st = wait_fd(fd, POLLOUT, deadline);
            if (st) return st;
        } else {
            return IO_DROPPED;
        }
    }
    return IO_OK;
}

/* One reply from c, fed from its socket until the deadline. */
static int read_reply(redisContext *c, redisReply **out, uint64_t deadline, int block) {
    for (;;) {
        void *r = NULL;
        if (redisReaderGetReply(c->reader, &r) != REDIS_OK) return IO_PROTOCOL;
        if (r) {
            *out = r;
            return IO_OK;
        }
        char buf[16384];
        ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK) return IO_OOM;
        } else if (n == 0) {
            return IO_DROPPED;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (!block) {
                *out = NULL;
                return IO_OK;
            }
            int st = wait_fd(c->fd, POLLIN, deadline);
            if (st) return st;
        } else {
            return IO_DROPPED;
        }
    }
}

/* Sends t's command (header hdr, then args) on c and reads its reply. */
static int exchange(redisContext *c, tconn *t, redisReply **out, uint64_t deadline) {
    if (t->oom) return IO_OOM;
    int st = send_all(c->fd, t->hdr.p, t->hdr.len, t->args.p, t->args.len, deadline);
    return st ? st : read_reply(c, out, deadline, 1);
}

/* The header of a plain command: "*argc" only (the name is the first argument). */
static void hdr_plain(tconn *t) {
    char h[32];
    int l = snprintf(h, sizeof h, "*%u\r\n", t->argc);
    if (buf_set(&t->hdr, (const uint8_t *)h, (size_t)l)) t->oom = 1;
}

/* ---- connections -------------------------------------------------------------------- */
static int is_error(const redisReply *r) { return r && r->type == REDIS_REPLY_ERROR; }

/* One command built in t, on a connection being set up (AUTH, SELECT, SUBSCRIBE): 1 if the
 * server answered without an error (and with an array, when `array`). */
static int setup_command(redisContext *c, tconn *t, uint64_t deadline, int array) {
    hdr_plain(t);
    redisReply *r = NULL;
    int ok = exchange(c, t, &r, deadline) == IO_OK && !is_error(r) &&
             (!array || (r && r->type == REDIS_REPLY_ARRAY));
    if (r) freeReplyObject(r);
    return ok;
}

/* The end of a setup: t's buffers freed; c itself, or NULL (and c closed) if it failed. */
static redisContext *setup_end(redisContext *c, tconn *t, int ok) {
    buf_free(&t->args);
    buf_free(&t->hdr);
    if (ok) return c;
    redisFree(c);
    return NULL;
}

static void backoff(rbackend *b) {
    uint64_t bo = atomic_load(&b->backoff_ns);
    uint64_t next = bo * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : bo * 2;
    atomic_store(&b->down_until, now_ns() + bo);
    atomic_store(&b->backoff_ns, next);
}

static void recovered(rbackend *b) {
    if (atomic_load_explicit(&b->down_until, memory_order_relaxed)) {
        atomic_store(&b->down_until, 0);
        atomic_store(&b->backoff_ns, BACKOFF_MIN_NS);
    }
}

static redisContext *dial(rbackend *b, uint64_t deadline) {
    uint64_t now = now_ns();
    if (now >= deadline) return NULL;
    uint64_t left = deadline - now;
    struct timeval tv = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull / 1000)};
    if (!tv.tv_sec && !tv.tv_usec) tv.tv_usec = 1;
    lock_yield(); /* connecting blocks */
    redisContext *c = redisConnectWithTimeout(b->ip, b->port, tv);
    if (!c) return NULL;
    if (c->err) {
        redisFree(c);
        return NULL;
    }
    /* AUTH and SELECT, when the URL asks, within the same deadline */
    tconn tmp = {0};
    int ok = 1;
    for (int step = 0; step < 2 && ok; step++) {
        cmd_begin(&tmp);
        if (step == 0 && b->pass) {
            arg_str(&tmp, "AUTH");
            if (b->user) arg_str(&tmp, b->user);
            arg_str(&tmp, b->pass);
        } else if (step == 1 && b->db) {
            arg_str(&tmp, "SELECT");
            arg_u64(&tmp, (uint64_t)b->db);
        } else {
            continue;
        }
        ok = setup_command(c, &tmp, deadline, 0);
    }
    return setup_end(c, &tmp, ok);
}

static void tconn_exit(void *p) {
    tconn *t = p;
    pthread_mutex_lock(&tconn_lock);
    if (t->b) {
        if (t->prev) t->prev->next = t->next;
        else t->b->conns = t->next;
        if (t->next) t->next->prev = t->prev;
        t->b = NULL;
    }
    pthread_mutex_unlock(&tconn_lock);
    if (t->c) redisFree(t->c);
    buf_free(&t->args);
    buf_free(&t->hdr);
    free(t);
}

/* This thread's connection, connected; NULL when the store cannot be reached now (in
 * backoff, or the connect failed). */
static tconn *conn(rbackend *b, uint64_t deadline) {
    tconn *t = pthread_getspecific(b->key);
    if (!t) {
        if (!(t = calloc(1, sizeof *t))) return NULL;
        if (pthread_setspecific(b->key, t)) {
            free(t);
            return NULL;
        }
        pthread_mutex_lock(&tconn_lock);
        t->b = b;
        t->next = b->conns;
        if (b->conns) b->conns->prev = t;
        b->conns = t;
        pthread_mutex_unlock(&tconn_lock);
    }
    if (t->c) return t;
    uint64_t until = atomic_load_explicit(&b->down_until, memory_order_acquire);
    if (until) {
        uint64_t now = now_ns();
        if (now < until) return NULL;
        /* the backoff is over: one thread probes, the others keep failing fast */
        if (!atomic_compare_exchange_strong(&b->down_until, &until,
                                            now + atomic_load(&b->backoff_ns)))
            return NULL;
    }
    t->c = dial(b, deadline);
    if (!t->c) {
        backoff(b);
        return NULL;
    }
    atomic_fetch_add_explicit(&b->st_reconnects, 1, memory_order_relaxed);
    recovered(b);
    return t;
}

static int unavailable(rbackend *b) {
    atomic_fetch_add_explicit(&b->head.unavailable, 1, memory_order_relaxed);
    return ST_INTERNAL_FAILURE;
}

/* After an exchange failed: the connection's stream is out of step, so it goes. A timeout
 * means the server does not answer: backoff. A dropped connection (the server restarted,
 * or closed an idle client) reconnects on the next call. */
static void failed(rbackend *b, tconn *t, int io) {
    redisFree(t->c);
    t->c = NULL;
    if (io == IO_TIMEOUT) backoff(b);
}

/* Runs t's plain command; the reply, or NULL when the store failed (counted). */
static redisReply *run(rbackend *b, tconn *t, uint64_t deadline) {
    hdr_plain(t);
    redisReply *r = NULL;
    int io = exchange(t->c, t, &r, deadline);
    if (io) {
        if (io != IO_OOM) failed(b, t, io);
        unavailable(b);
        return NULL;
    }
    if (is_error(r)) {
        freeReplyObject(r);
        unavailable(b);
        return NULL;
    }
    return r;
}

/* Runs script `which` with t's arguments (nkeys keys first): EVALSHA, then EVAL when the
 * server no longer has it (a restart, SCRIPT FLUSH). */
static redisReply *script(rbackend *b, tconn *t, int which, int nkeys, uint64_t deadline) {
    for (int pass = 0; pass < 2; pass++) {
        const char *body = pass ? script_text[which] : b->sha[which];
        char h[96];
        size_t bl = strlen(body);
        int l = snprintf(h, sizeof h, "*%u\r\n$%d\r\n%s\r\n$%zu\r\n", t->argc + 3,
                         pass ? 4 : 7, pass ? "EVAL" : "EVALSHA", bl);
        char nk[16];
        int nl = snprintf(nk, sizeof nk, "%d", nkeys);
        char h2[32];
        int l2 = snprintf(h2, sizeof h2, "\r\n$%d\r\n%s\r\n", nl, nk);
        buf_clear(&t->hdr);
        if (buf_append(&t->hdr, (const uint8_t *)h, (size_t)l) ||
            buf_append(&t->hdr, (const uint8_t *)body, bl) ||
            buf_append(&t->hdr, (const uint8_t *)h2, (size_t)l2))
            t->oom = 1;
        redisReply *r = NULL;
        int io = exchange(t->c, t, &r, deadline);
        if (io) {
            if (io != IO_OOM) failed(b, t, io);
            unavailable(b);
            return NULL;
        }
        if (is_error(r)) {
            int noscript = !pass && r->len >= 8 && !memcmp(r->str, "NOSCRIPT", 8);
            freeReplyObject(r);
            if (noscript) continue;
            unavailable(b);
            return NULL;
        }
        return r;
    }
    return NULL;
}

/* Every operation starts here: this thread's connection and the operation's deadline. */
static tconn *begin(rbackend *b, uint64_t *deadline) {
    *deadline = now_ns() + b->timeout_ns;
    tconn *t = conn(b, *deadline);
    if (t) cmd_begin(t);
    return t;
}

static int neg_status(long long v) { return v < 0 ? (int)-v : ST_OK; }

/* Runs a script whose answer is an integer status (0 OK, -status otherwise). */
static int script_status(rbackend *b, tconn *t, int which, int nkeys, uint64_t deadline) {
    redisReply *r = script(b, t, which, nkeys, deadline);
    if (!r) return ST_INTERNAL_FAILURE;
    int st = r->type == REDIS_REPLY_INTEGER ? neg_status(r->integer) : ST_INTERNAL_FAILURE;
    freeReplyObject(r);
    return st;
}

/* ---- shared data -------------------------------------------------------------------- */
static void data_keys(tconn *t, rbackend *b, const pw_buf *scope, const uint8_t *k, size_t kl) {
    arg_skey(t, b, "d", scope, k, kl, 1);
    arg_skey(t, b, "b", scope, NULL, 0, 0);
    arg_skey(t, b, "x", scope, NULL, 0, 0);
    arg_skey(t, b, "t", scope, NULL, 0, 0);
}

static void data_prefix(tconn *t, rbackend *b, const pw_buf *scope) {
    arg_skey(t, b, "d", scope, (const uint8_t *)"", 0, 1); /* "P:d:H:" */
}

static int r_get(pw_backend *pb, const pw_buf *scope, const uint8_t *k, size_t kl, pw_buf *out,
                 uint32_t *cas) {
    rbackend *b = (rbackend *)pb;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    arg_str(t, "HMGET");
    arg_skey(t, b, "d", scope, k, kl, 1);
    arg_str(t, "v");
    arg_str(t, "c");
    redisReply *r = run(b, t, dl);
    if (!r) return ST_INTERNAL_FAILURE;
    int st = ST_INTERNAL_FAILURE;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        redisReply *v = r->element[0], *c = r->element[1];
        if (c->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            st = ST_NOT_FOUND;
        } else {
            st = buf_set(out, (const uint8_t *)v->str, v->len) ? ST_INTERNAL_FAILURE : ST_OK;
            *cas = (uint32_t)strtoull(c->str, NULL, 10);
        }
    }
    freeReplyObject(r);
    return st;
}

static int r_set(pw_backend *pb, const pw_buf *scope, const uint8_t *k, size_t kl,
                 const uint8_t *v, size_t n, uint32_t cas) {
    rbackend *b = (rbackend *)pb;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    data_keys(t, b, scope, k, kl);
    arg_pkey(t, b, "cas", "");
    arg(t, k, kl);
    arg(t, v, n);
    arg_u64(t, cas);
    arg_u64(t, b->head.max_bytes);
    arg_u64(t, b->head.default_ttl_ms);
    data_prefix(t, b, scope);
    return script_status(b, t, S_SET, 5, dl);
}

static int r_del(pw_backend *pb, const pw_buf *scope, const uint8_t *k, size_t kl, uint32_t cas) {
    rbackend *b = (rbackend *)pb;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    data_keys(t, b, scope, k, kl);
    arg(t, k, kl);
    arg_u64(t, cas);
    data_prefix(t, b, scope);
    return script_status(b, t, S_DEL, 4, dl);
}

static int r_expire(pw_backend *pb, const pw_buf *scope, const uint8_t *k, size_t kl,
                    uint64_t ttl_ms) {
    rbackend *b = (rbackend *)pb;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    data_keys(t, b, scope, k, kl);
    arg(t, k, kl);
    arg_u64(t, ttl_ms);
    data_prefix(t, b, scope);
    return script_status(b, t, S_EXPIRE, 4, dl);
}

/* ---- queues ------------------------------------------------------------------------- */
static void owner_string(rbackend *b, uint64_t reg, char *out, size_t cap) {
    snprintf(out, cap, "%s:%llu", b->inst, (unsigned long long)reg);
}

static owner_ent **owner_slot(rbackend *b, uint32_t id) {
    owner_ent **e = &b->owners[id % OWNER_BUCKETS];
    while (*e && (*e)->id != id) e = &(*e)->next;
    return e;
}

static int r_q_register(pw_backend *pb, const pw_buf *scope, const uint8_t *name, size_t nl,
                        const pw_queue_owner *owner, int may_create, int *created,
                        uint32_t *id) {
    rbackend *b = (rbackend *)pb;
    *created = 0;
    owner_ent *fresh = calloc(1, sizeof *fresh);
    if (!fresh) return ST_INTERNAL_FAILURE;
    /* Held across the round trip: the subscriber must not see this queue's first
     * notification before the local owner is known (registration is rare). */
    pthread_mutex_lock(&b->owners_lock);
    uint64_t reg = ++b->reg_seq;
    char os[48];
    owner_string(b, reg, os, sizeof os);
    uint64_t dl;
    int st = ST_INTERNAL_FAILURE;
    tconn *t = begin(b, &dl);
    redisReply *r = NULL;
    if (!t) {
        unavailable(b);
    } else {
        arg_skey(t, b, "qn", scope, NULL, 0, 0);
        arg_pkey(t, b, "qseq", "");
        arg(t, name, nl);
        arg_str(t, may_create ? "1" : "0");
        arg_str(t, os);
        arg_pkey(t, b, "qo:", "");
        arg_u64(t, QUEUE_ID_MAX);
        r = script(b, t, S_QREG, 2, dl);
    }
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER) {
        long long v = r->element[0]->integer;
        if (v > 0) {
            *id = (uint32_t)v;
            *created = r->element[1]->type == REDIS_REPLY_INTEGER && r->element[1]->integer;
            /* A dispatcher a queue owner names is never freed (closed, it drops posts),
             * as for the in-process queues: the subscriber may post to it any time. */
            if (owner->d) atomic_store_explicit(&owner->d->named, 1, memory_order_release);
            owner_ent **e = owner_slot(b, *id);
            if (!owner->d) {
                /* no dispatcher to notify (nothing can run on_queue_ready): no local owner */
            } else if (*e) {
                (*e)->o = *owner;
                (*e)->reg = reg;
            } else {
                *fresh = (owner_ent){*id, reg, *owner, NULL};
                *e = fresh;
                fresh = NULL;
            }
            st = ST_OK;
        } else {
            st = neg_status(v);
        }
    }
    pthread_mutex_unlock(&b->owners_lock);
    if (r) freeReplyObject(r);
    free(fresh);
    return st;
}

static int r_q_resolve(pw_backend *pb, const pw_buf *scope, const uint8_t *name, size_t nl,
                       uint32_t *id) {
    rbackend *b = (rbackend *)pb;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    arg_str(t, "HGET");
    arg_skey(t, b, "qn", scope, NULL, 0, 0);
    arg(t, name, nl);
    redisReply *r = run(b, t, dl);
    if (!r) return ST_INTERNAL_FAILURE;
    int st = ST_NOT_FOUND;
    if (r->type == REDIS_REPLY_STRING) {
        unsigned long long v = strtoull(r->str, NULL, 10);
        if (v && v <= QUEUE_ID_MAX) {
            *id = (uint32_t)v;
            st = ST_OK;
        }
    }
    freeReplyObject(r);
    return st;
}

static int r_q_enqueue(pw_backend *pb, uint32_t id, const uint8_t *d, size_t n) {
    rbackend *b = (rbackend *)pb;
    if (!id || id > QUEUE_ID_MAX) return ST_NOT_FOUND;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    arg_qkey(t, b, "q:", id);
    arg_qkey(t, b, "qo:", id);
    arg_qkey(t, b, "qb:", id);
    arg(t, d, n);
    arg_u64(t, QUEUE_ITEMS_MAX);
    arg_u64(t, QUEUE_BYTES_MAX);
    arg_pkey(t, b, "n:", "");
    arg_u64(t, id);
    return script_status(b, t, S_ENQ, 3, dl);
}

static int r_q_dequeue(pw_backend *pb, uint32_t id, pw_buf *out) {
    rbackend *b = (rbackend *)pb;
    if (!id || id > QUEUE_ID_MAX) return ST_NOT_FOUND;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) return unavailable(b);
    arg_qkey(t, b, "q:", id);
    arg_qkey(t, b, "qo:", id);
    arg_qkey(t, b, "qb:", id);
    redisReply *r = script(b, t, S_DEQ, 3, dl);
    if (!r) return ST_INTERNAL_FAILURE;
    int st = ST_INTERNAL_FAILURE;
    if (r->type == REDIS_REPLY_STRING)
        st = buf_set(out, (const uint8_t *)r->str, r->len) ? ST_INTERNAL_FAILURE : ST_OK;
    else if (r->type == REDIS_REPLY_INTEGER)
        st = neg_status(r->integer);
    freeReplyObject(r);
    return st;
}

static int64_t r_q_size(pw_backend *pb, uint32_t id) {
    rbackend *b = (rbackend *)pb;
    if (!id || id > QUEUE_ID_MAX) return -1;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) {
        unavailable(b);
        return -1;
    }
    arg_qkey(t, b, "q:", id);
    arg_qkey(t, b, "qo:", id);
    redisReply *r = script(b, t, S_QSIZE, 2, dl);
    if (!r) return -1;
    int64_t n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

/* ---- the subscriber ----------------------------------------------------------------- */
/* Under owners_lock. */
static void notify_locked(rbackend *b, uint32_t id, uint64_t count) {
    owner_ent *e = *owner_slot(b, id);
    if (!e) {
        atomic_fetch_add_explicit(&b->st_dropped, count, memory_order_relaxed);
        return;
    }
    uint32_t full = (b->head.slot << 24) | id;
    for (uint64_t i = 0; i < count; i++) {
        if (dispatcher_post(e->o.d, e->o.vm_key, e->o.root, full)) {
            atomic_fetch_add_explicit(&b->st_dropped, count - i, memory_order_relaxed);
            return;
        }
        atomic_fetch_add_explicit(&b->st_notified, 1, memory_order_relaxed);
    }
}

/* After a (re)subscription: one notification per item still waiting in each queue this
 * process owns (messages published while unsubscribed are lost). 0 on success. */
static int flush(rbackend *b) {
    size_t n = 0, cap = 0;
    struct { uint32_t id; uint64_t reg; } *snap = NULL;
    pthread_mutex_lock(&b->owners_lock);
    for (int i = 0; i < OWNER_BUCKETS; i++)
        for (owner_ent *e = b->owners[i]; e; e = e->next) {
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                void *ns = realloc(snap, nc * sizeof *snap);
                if (!ns) continue;
                snap = ns;
                cap = nc;
            }
            snap[n].id = e->id;
            snap[n++].reg = e->reg;
        }
    pthread_mutex_unlock(&b->owners_lock);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        uint64_t dl;
        tconn *t = begin(b, &dl);
        if (!t) {
            rc = -1;
            break;
        }
        char os[48];
        owner_string(b, snap[i].reg, os, sizeof os);
        arg_qkey(t, b, "qo:", snap[i].id);
        arg_qkey(t, b, "q:", snap[i].id);
        arg_str(t, os);
        redisReply *r = script(b, t, S_OWNED, 2, dl);
        if (!r) {
            rc = -1;
            break;
        }
        if (r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
            pthread_mutex_lock(&b->owners_lock);
            owner_ent *e = *owner_slot(b, snap[i].id);
            if (e && e->reg == snap[i].reg) {
                notify_locked(b, snap[i].id, (uint64_t)r->integer);
                atomic_fetch_add_explicit(&b->st_flushed, (uint64_t)r->integer,
                                          memory_order_relaxed);
            }
            pthread_mutex_unlock(&b->owners_lock);
        }
        freeReplyObject(r);
    }
    free(snap);
    return rc;
}

static void on_message(rbackend *b, redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
    redisReply *kind = r->element[0], *payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || kind->len != 7 || memcmp(kind->str, "message", 7) ||
        payload->type != REDIS_REPLY_STRING || payload->len > 10)
        return;
    char s[12];
    memcpy(s, payload->str, payload->len);
    s[payload->len] = 0;
    unsigned long v = strtoul(s, NULL, 10);
    if (!v || v > QUEUE_ID_MAX) return;
    pthread_mutex_lock(&b->owners_lock);
    notify_locked(b, (uint32_t)v, 1);
    pthread_mutex_unlock(&b->owners_lock);
}

/* Waits until t (monotonic ns) or until asked to stop; 1 if asked to stop. */
static int sub_sleep(rbackend *b, uint64_t until) {
    while (!atomic_load(&b->stop)) {
        uint64_t now = now_ns();
        if (now >= until) return 0;
        uint64_t left = until - now;
        struct timespec ts = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
        struct pollfd p = {b->stop_fd, POLLIN, 0};
        ppoll(&p, 1, &ts, NULL);
    }
    return 1;
}

static redisContext *subscribe(rbackend *b) {
    uint64_t dl = now_ns() + b->timeout_ns;
    redisContext *c = dial(b, dl);
    if (!c) return NULL;
    tconn tmp = {0};
    cmd_begin(&tmp);
    arg_str(&tmp, "SUBSCRIBE");
    arg_pkey(&tmp, b, "n:", b->inst);
    return setup_end(c, &tmp, setup_command(c, &tmp, dl, 1));
}

static void *subscriber(void *arg_) {
    rbackend *b = arg_;
    redisContext *c = NULL;
    uint64_t retry_at = 0, bo = BACKOFF_MIN_NS, last_rx = 0, ping_at = 0;
    while (!atomic_load(&b->stop)) {
        if (!c) {
            if (sub_sleep(b, retry_at)) break;
            if (!(c = subscribe(b)) || flush(b)) {
                if (c) redisFree(c);
                c = NULL;
                retry_at = now_ns() + bo;
                bo = bo * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : bo * 2;
                continue;
            }
            atomic_fetch_add_explicit(&b->st_subscribed, 1, memory_order_relaxed);
            bo = BACKOFF_MIN_NS;
            last_rx = now_ns();
            ping_at = 0;
        }
        /* Drain what has arrived, then wait for more, a stop, or the keepalive. */
        int io;
        redisReply *r;
        while ((io = read_reply(c, &r, 0, 0)) == IO_OK && r) {
            on_message(b, r);
            freeReplyObject(r);
            last_rx = now_ns();
            ping_at = 0;
        }
        if (io == IO_OK) {
            uint64_t now = now_ns();
            uint64_t wait_until = ping_at ? ping_at + SUB_PONG_NS + b->timeout_ns
                                          : last_rx + SUB_PING_NS;
            if (now >= wait_until) {
                if (ping_at) {
                    io = IO_TIMEOUT; /* no answer to the keepalive: the link is dead */
                } else {
                    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
                    io = send_all(c->fd, (const uint8_t *)ping, sizeof ping - 1, NULL, 0,
                                  now + b->timeout_ns);
                    ping_at = now;
                }
            } else {
                uint64_t left = wait_until - now;
                struct timespec ts = {(time_t)(left / 1000000000ull),
                                      (long)(left % 1000000000ull)};
                struct pollfd p[2] = {{c->fd, POLLIN, 0}, {b->stop_fd, POLLIN, 0}};
                ppoll(p, 2, &ts, NULL);
            }
        }
        if (io != IO_OK) {
            redisFree(c);
            c = NULL;
            retry_at = 0; /* the first reconnect is immediate; then backoff */
        }
    }
    if (c) redisFree(c);
    return NULL;
}

/* ---- open / destroy ----------------------------------------------------------------- */
static void r_destroy(pw_backend *pb) {
    rbackend *b = (rbackend *)pb;
    if (b->sub_started) {
        atomic_store(&b->stop, 1);
        uint64_t one = 1;
        ssize_t w = write(b->stop_fd, &one, sizeof one);
        (void)w;
        pthread_join(b->sub, NULL);
    }
    /* Best effort: queues this process still owns notify nobody any more. */
    pthread_mutex_lock(&b->owners_lock);
    for (int i = 0; i < OWNER_BUCKETS; i++)
        while (b->owners[i]) {
            owner_ent *e = b->owners[i];
            b->owners[i] = e->next;
            uint64_t dl;
            tconn *t = atomic_load(&b->down_until) ? NULL : begin(b, &dl);
            if (t) {
                char os[48];
                owner_string(b, e->reg, os, sizeof os);
                arg_qkey(t, b, "qo:", e->id);
                arg_str(t, os);
                redisReply *r = script(b, t, S_RELEASE, 1, dl);
                if (r) freeReplyObject(r);
            }
            free(e);
        }
    pthread_mutex_unlock(&b->owners_lock);
    /* Every thread's connection goes now; a thread still alive keeps only its emptied
     * struct (its key is deleted, so nothing reads it again). */
    pthread_mutex_lock(&tconn_lock);
    for (tconn *t = b->conns, *next; t; t = next) {
        next = t->next;
        if (t->c) redisFree(t->c);
        t->c = NULL;
        buf_free(&t->args);
        buf_free(&t->hdr);
        t->b = NULL;
        t->next = t->prev = NULL;
        if (t == pthread_getspecific(b->key)) {
            pthread_setspecific(b->key, NULL);
            free(t);
        }
    }
    b->conns = NULL;
    pthread_mutex_unlock(&tconn_lock);
    pthread_key_delete(b->key);
    if (b->stop_fd >= 0) close(b->stop_fd);
    pthread_mutex_destroy(&b->owners_lock);
    buf_free(&b->prefix);
    free(b->user);
    free(b->pass);
    free(b);
}

static const pw_backend_ops redis_ops = {
    .kind = "redis",
    .get = r_get,
    .set = r_set,
    .del = r_del,
    .expire = r_expire,
    .q_register = r_q_register,
    .q_resolve = r_q_resolve,
    .q_enqueue = r_q_enqueue,
    .q_dequeue = r_q_dequeue,
    .q_size = r_q_size,
    .destroy = r_destroy,
};

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A percent-decoded copy of s[0..n), or NULL. */
static char *pct_decode(const char *s, size_t n) {
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            o[j++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            o[j++] = s[i];
        }
    }
    o[j] = 0;
    return o;
}

/* redis://[[user]:password@]host[:port][/db]. 0, or -1 with err. */
static int parse_url(rbackend *b, const char *url, char *host, size_t hcap, char *err,
                     size_t ecap) {
    const char *p;
    if (!strncmp(url, "redis://", 8)) {
        p = url + 8;
    } else if (!strncmp(url, "rediss://", 9)) {
        snprintf(err, ecap, "Redis URL %s: TLS (rediss://) is not supported", url);
        return -1;
    } else {
        snprintf(err, ecap, "Redis URL %s: expected redis://[[user]:password@]host[:port][/db]",
                 url);
        return -1;
    }
    if (strpbrk(p, "?#")) {
        snprintf(err, ecap, "Redis URL %s: query and fragment are not supported", url);
        return -1;
    }
    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at && (!slash || at < slash)) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p && !(b->user = pct_decode(p, (size_t)(colon - p)))) return -1;
            if (!(b->pass = pct_decode(colon + 1, (size_t)(at - colon - 1)))) return -1;
        } else if (!(b->pass = pct_decode(p, (size_t)(at - p)))) {
            return -1;
        }
        p = at + 1;
    }
    const char *end = p + strcspn(p, "/");
    const char *hs = p, *he, *port = NULL;
    if (*p == '[') {
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (!close) {
            snprintf(err, ecap, "Redis URL %s: unclosed '[' in the host", url);
            return -1;
        }
        hs = p + 1;
        he = close;
        if (close + 1 < end) {
            if (close[1] != ':') {
                snprintf(err, ecap, "Redis URL %s: bad host", url);
                return -1;
            }
            port = close + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        he = colon ? colon : end;
        if (colon) port = colon + 1;
    }
    if (he == hs || (size_t)(he - hs) >= hcap) {
        snprintf(err, ecap, "Redis URL %s: no host", url);
        return -1;
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = 0;
    b->port = 6379;
    if (port) {
        long v = 0;
        const char *q = port;
        for (; q < end && *q >= '0' && *q <= '9' && v <= 65535; q++) v = v * 10 + (*q - '0');
        if (q == port || q != end || v < 1 || v > 65535) {
            snprintf(err, ecap, "Redis URL %s: bad port", url);
            return -1;
        }
        b->port = (int)v;
    }
    b->db = 0;
    if (*end == '/' && end[1]) {
        long v = 0;
        const char *q = end + 1;
        for (; *q >= '0' && *q <= '9' && v < 1000000; q++) v = v * 10 + (*q - '0');
        if (*q || q == end + 1 || v >= 1000000) {
            snprintf(err, ecap, "Redis URL %s: the path must be a database number", url);
            return -1;
        }
        b->db = (int)v;
    }
    return 0;
}

int pw_redis_available(void) { return 1; }

pw_backend *pw_redis_open(const char *url, uint64_t timeout_us, const uint8_t *prefix,
                          size_t prefix_len, uint64_t max_bytes, uint64_t default_ttl_ms,
                          char *err, size_t err_cap) {
    if (!timeout_us) {
        snprintf(err, err_cap, "Redis timeout must be positive");
        return NULL;
    }
    rbackend *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    b->stop_fd = -1;
    b->head.ops = &redis_ops;
    b->head.max_bytes = max_bytes;
    b->head.default_ttl_ms = default_ttl_ms;
    b->timeout_ns = timeout_us * 1000ull;
    atomic_store(&b->backoff_ns, BACKOFF_MIN_NS);
    pthread_mutex_init(&b->owners_lock, NULL);
    int key_ok = !pthread_key_create(&b->key, tconn_exit);
    char host[256];
    uint64_t inst = 0;
    if (!key_ok) {
        snprintf(err, err_cap, "no thread-local key left");
        goto fail;
    }
    if (parse_url(b, url, host, sizeof host, err, err_cap)) goto fail;
    if (buf_set(&b->prefix, prefix, prefix_len)) goto fail;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(host, NULL, &hints, &ai);
    if (gai || !ai) {
        snprintf(err, err_cap, "Redis URL %s: cannot resolve %s: %s", url, host,
                 gai_strerror(gai));
        goto fail;
    }
    getnameinfo(ai->ai_addr, ai->ai_addrlen, b->ip, sizeof b->ip, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(ai);
    if (getrandom(&inst, sizeof inst, 0) != sizeof inst) inst = now_ns() ^ (uint64_t)getpid() << 32;
    snprintf(b->inst, sizeof b->inst, "%016llx", (unsigned long long)inst);
    /* One round trip now: a wrong address, password or database is an error here, not
     * an outage later; and the scripts' SHA1s come from the server (SCRIPT LOAD). Opening
     * is not on a worker's path: it may take up to 2 s even with a shorter timeout. */
    uint64_t op_timeout = b->timeout_ns;
    if (b->timeout_ns < OPEN_TIMEOUT_NS) b->timeout_ns = OPEN_TIMEOUT_NS;
    uint64_t dl;
    tconn *t = begin(b, &dl);
    if (!t) {
        snprintf(err, err_cap, "cannot connect to Redis at %s:%d (db %d) within %.3f s", b->ip,
                 b->port, b->db, (double)b->timeout_ns / 1e9);
        goto fail;
    }
    for (int i = 0; i < S_COUNT; i++) {
        cmd_begin(t);
        arg_str(t, "SCRIPT");
        arg_str(t, "LOAD");
        arg_str(t, script_text[i]);
        redisReply *r = run(b, t, dl);
        if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
            snprintf(err, err_cap, "Redis at %s:%d refused SCRIPT LOAD (Redis >= 5 with Lua "
                     "scripting is needed)", b->ip, b->port);
            if (r) freeReplyObject(r);
            goto fail;
        }
        memcpy(b->sha[i], r->str, 40);
        b->sha[i][40] = 0;
        freeReplyObject(r);
    }
    b->timeout_ns = op_timeout;
    atomic_store(&b->head.unavailable, 0);
    b->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (b->stop_fd < 0 || pthread_create(&b->sub, NULL, subscriber, b)) {
        snprintf(err, err_cap, "cannot start the Redis subscriber thread");
        goto fail;
    }
    b->sub_started = 1;
    /* Subscribed before any queue can be registered: a notification published before the
     * first subscription would be lost and made up by the flush, maybe twice over. */
    uint64_t until = now_ns() + OPEN_TIMEOUT_NS;
    while (!atomic_load(&b->st_subscribed) && now_ns() < until) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    if (!atomic_load(&b->st_subscribed)) {
        snprintf(err, err_cap, "Redis at %s:%d: cannot subscribe to the notification channel",
                 b->ip, b->port);
        goto fail;
    }
    return &b->head;
fail:
    if (!key_ok) {
        pthread_mutex_destroy(&b->owners_lock);
        free(b);
        return NULL;
    }
    r_destroy(&b->head);
    return NULL;
}

uint64_t pw_redis_stat(pw_backend *pb, int which) {
    rbackend *b = (rbackend *)pb;
    switch (which) {
    case PW_REDIS_UNAVAILABLE: return atomic_load(&b->head.unavailable);
    case PW_REDIS_NOTIFIED: return atomic_load(&b->st_notified);
    case PW_REDIS_DROPPED: return atomic_load(&b->st_dropped);
    case PW_REDIS_SUBSCRIBED: return atomic_load(&b->st_subscribed);
    case PW_REDIS_FLUSHED: return atomic_load(&b->st_flushed);
    case PW_REDIS_CONNECTS: return atomic_load(&b->st_reconnects);
    default: return 0;
    }
}

#endif
