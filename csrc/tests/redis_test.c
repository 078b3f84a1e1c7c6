/* The Redis backend (redis.c) driven from C against a real redis-server that this program
 * starts on a free 127.0.0.1 port (no persistence) and stops. Plain and under TSan:
 *   make -C csrc redis-test     make -C csrc redis-tsan
 * Checks the ops of backend.h one by one (CAS, delete, TTL, byte cap with expiry giving
 * bytes back, queues and their notifications), exact totals of CAS increments from
 * THREADS threads, and outages: a stopped server (SIGSTOP) answers INTERNAL_FAILURE
 * within the timeout and then at once while in backoff, counted; a killed and restarted
 * server is used again. Exit status 0 when everything holds. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../backend.h"

#define THREADS 8
#define INCREMENTS 300
#define TIMEOUT_US 1000000     /* functional checks: no busy machine reaches it */
#define OUTAGE_TIMEOUT_US 50000 /* the outage checks: what a deployment would use */

static int failures;
#define CHECK(cond, ...)                           \
    do {                                           \
        if (!(cond)) {                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);          \
            fputc('\n', stderr);                   \
            failures++;                            \
        }                                          \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* ---- the server ---------------------------------------------------------------------- */
static pid_t server;
static int port;

static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) || getsockname(s, (struct sockaddr *)&a, &l))
        return -1;
    close(s);
    return ntohs(a.sin_port);
}

static int reachable(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = !connect(s, (struct sockaddr *)&a, sizeof a);
    close(s);
    return ok;
}

static void start_server(void) {
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    server = fork();
    if (!server) {
        if (!freopen("/dev/null", "w", stdout)) _exit(127);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500 && !reachable(); i++) sleep_ms(10);
}

static void stop_server(int sig) {
    kill(server, sig);
    if (sig == SIGKILL || sig == SIGTERM) waitpid(server, NULL, 0);
}

/* ---- helpers ------------------------------------------------------------------------- */
static pw_backend *open_t(const char *prefix, uint64_t max_bytes, uint64_t ttl,
                          uint64_t timeout_us) {
    char url[64], err[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    pw_backend *b = pw_redis_open(url, timeout_us, (const uint8_t *)prefix, strlen(prefix),
                                  max_bytes, ttl, err, sizeof err);
    if (!b) {
        fprintf(stderr, "open: %s\n", err);
        exit(1);
    }
    b->slot = 1;
    return b;
}

static pw_backend *open_b(const char *prefix, uint64_t max_bytes, uint64_t ttl) {
    return open_t(prefix, max_bytes, ttl, TIMEOUT_US);
}

static pw_buf scope_of(const char *vm_id) {
    pw_buf s = {0};
    scope_make(&s, (const uint8_t *)"", 0, (const uint8_t *)vm_id, strlen(vm_id));
    return s;
}

#define K(s) (const uint8_t *)(s), strlen(s)

/* ---- tests --------------------------------------------------------------------------- */
static void test_urls(void) {
    static const char *bad[] = {"http://x", "redis://", "redis://h:0", "redis://h:99999",
                                "redis://h/x", "redis://h?db=1", "rediss://h",
                                "redis://[::1", "redis://h:12ab"};
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        pw_backend *b = pw_redis_open(bad[i], TIMEOUT_US, K("p"), 0, 0, err, sizeof err);
        CHECK(!b && strstr(err, "Redis URL"), "%s accepted or unclear: %s", bad[i], err);
    }
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", free_port());
    pw_backend *b = pw_redis_open(url, TIMEOUT_US, K("p"), 0, 0, err, sizeof err);
    CHECK(!b && strstr(err, "cannot connect"), "nobody listening: %s", err);
}

static void test_data(void) {
    pw_backend *b = open_b("t1", 0, 0);
    pw_buf s = scope_of("vm"), s2 = scope_of("vm2"), out = {0};
    uint32_t cas = 0, cas2 = 0;
    CHECK(b->ops->get(b, &s, K("k"), &out, &cas) == ST_NOT_FOUND, "missing key");
    CHECK(b->ops->set(b, &s, K("k"), K("one"), 0) == ST_OK, "set");
    CHECK(b->ops->get(b, &s, K("k"), &out, &cas) == ST_OK && out.len == 3 &&
              !memcmp(out.p, "one", 3) && cas,
          "get after set");
    CHECK(b->ops->get(b, &s2, K("k"), &out, &cas2) == ST_NOT_FOUND, "scopes are apart");
    CHECK(b->ops->set(b, &s, K("k"), K("two"), cas + 1000) == ST_CAS_MISMATCH, "stale cas");
    CHECK(b->ops->set(b, &s, K("k"), K("two"), cas) == ST_OK, "matching cas");
    CHECK(b->ops->get(b, &s, K("k"), &out, &cas2) == ST_OK && cas2 != cas && cas2 &&
              !memcmp(out.p, "two", 3),
          "new cas");
    CHECK(b->ops->set(b, &s, K("k"), K("three"), cas) == ST_CAS_MISMATCH, "old cas");
    CHECK(b->ops->set(b, &s, K("absent"), K("x"), 12345) == ST_OK, "absent never mismatches");
    CHECK(b->ops->set(b, &s, K("empty"), (const uint8_t *)"", 0, 0) == ST_OK, "empty value");
    CHECK(b->ops->get(b, &s, K("empty"), &out, &cas) == ST_OK && out.len == 0, "empty get");
    const uint8_t bin[] = {0, ':', 0xff, '\r', '\n'};
    CHECK(b->ops->set(b, &s, bin, sizeof bin, bin, sizeof bin, 0) == ST_OK, "binary key");
    CHECK(b->ops->get(b, &s, bin, sizeof bin, &out, &cas) == ST_OK && out.len == sizeof bin &&
              !memcmp(out.p, bin, sizeof bin),
          "binary get");
    CHECK(b->ops->get(b, &s, bin, 1, &out, &cas) == ST_NOT_FOUND, "key prefix is not the key");
    /* delete */
    CHECK(b->ops->del(b, &s, K("nope"), 0) == ST_NOT_FOUND, "del absent");
    b->ops->get(b, &s, K("k"), &out, &cas);
    CHECK(b->ops->del(b, &s, K("k"), cas + 1) == ST_CAS_MISMATCH, "del stale cas");
    CHECK(b->ops->del(b, &s, K("k"), cas) == ST_OK, "del");
    CHECK(b->ops->get(b, &s, K("k"), &out, &cas) == ST_NOT_FOUND, "gone");
    /* TTL, and a later set keeps it */
    CHECK(b->ops->expire(b, &s, K("nope"), 100) == ST_NOT_FOUND, "expire absent");
    b->ops->set(b, &s, K("t"), K("v"), 0);
    CHECK(b->ops->expire(b, &s, K("t"), 150) == ST_OK, "expire");
    b->ops->set(b, &s, K("t"), K("v2"), 0);
    CHECK(b->ops->get(b, &s, K("t"), &out, &cas) == ST_OK, "alive before its TTL");
    sleep_ms(300);
    CHECK(b->ops->get(b, &s, K("t"), &out, &cas) == ST_NOT_FOUND, "expired (TTL kept by set)");
    b->ops->set(b, &s, K("p"), K("v"), 0);
    b->ops->expire(b, &s, K("p"), 100);
    CHECK(b->ops->expire(b, &s, K("p"), 0) == ST_OK, "persist");
    sleep_ms(200);
    CHECK(b->ops->get(b, &s, K("p"), &out, &cas) == ST_OK, "persisted");
    b->ops->destroy(b);
    buf_free(&s);
    buf_free(&s2);
    buf_free(&out);
}

static void test_cap(void) {
    pw_backend *b = open_b("t2", 100, 0);
    pw_buf s = scope_of("cap"), out = {0};
    uint8_t v[60] = {0};
    CHECK(b->ops->set(b, &s, K("a"), v, 49, 0) == ST_OK, "50 bytes");
    CHECK(b->ops->set(b, &s, K("b"), v, 49, 0) == ST_OK, "100 bytes");
    CHECK(b->ops->set(b, &s, K("c"), v, 0, 0) == ST_INTERNAL_FAILURE, "past the cap");
    CHECK(b->ops->get(b, &s, K("c"), &out, &(uint32_t){0}) == ST_NOT_FOUND, "nothing stored");
    CHECK(b->ops->set(b, &s, K("a"), v, 50, 0) == ST_INTERNAL_FAILURE, "growing past the cap");
    CHECK(b->ops->set(b, &s, K("a"), v, 10, 0) == ST_OK, "shrinking");
    CHECK(b->ops->del(b, &s, K("b"), 0) == ST_OK, "delete gives bytes back");
    CHECK(b->ops->set(b, &s, K("c"), v, 60, 0) == ST_OK, "room again");
    /* an expired key gives its bytes back at the next write */
    CHECK(b->ops->expire(b, &s, K("c"), 50) == ST_OK, "expire c");
    CHECK(b->ops->set(b, &s, K("d"), v, 60, 0) == ST_INTERNAL_FAILURE, "c still counts");
    sleep_ms(120);
    CHECK(b->ops->set(b, &s, K("d"), v, 60, 0) == ST_OK, "c expired: its bytes are back");
    b->ops->destroy(b);
    /* default TTL on first write */
    b = open_b("t3", 0, 100);
    CHECK(b->ops->set(b, &s, K("e"), K("v"), 0) == ST_OK, "set with default ttl");
    sleep_ms(200);
    CHECK(b->ops->get(b, &s, K("e"), &out, &(uint32_t){0}) == ST_NOT_FOUND, "default ttl");
    b->ops->destroy(b);
    buf_free(&s);
    buf_free(&out);
}

static void test_queues(void) {
    pw_backend *b = open_b("t4", 0, 0), *other = open_b("t4", 0, 0);
    pw_buf s = scope_of("q"), out = {0};
    pw_dispatcher *d = pw_dispatcher_new();
    pw_queue_owner o = {d, 7, 1};
    uint32_t id = 0, id2 = 0;
    int created = 0;
    CHECK(b->ops->q_resolve(b, &s, K("items"), &id) == ST_NOT_FOUND, "resolve unregistered");
    CHECK(b->ops->q_register(b, &s, K("items"), &o, 0, &created, &id) != ST_OK,
          "find-only of a missing queue");
    CHECK(b->ops->q_register(b, &s, K("items"), &o, 1, &created, &id) == ST_OK && id && created,
          "register");
    CHECK(other->ops->q_resolve(other, &s, K("items"), &id2) == ST_OK && id2 == id,
          "another process resolves the same id");
    CHECK(b->ops->q_register(b, &s, K("items"), &o, 1, &created, &id2) == ST_OK && id2 == id &&
              !created,
          "register again");
    CHECK(b->ops->q_dequeue(b, id, &out) == ST_EMPTY, "empty");
    CHECK(b->ops->q_dequeue(b, id + 100, &out) == ST_NOT_FOUND, "unknown id");
    CHECK(b->ops->q_enqueue(b, id + 100, K("x")) == ST_NOT_FOUND, "enqueue unknown");
    uint64_t posted0 = atomic_load(&d->posted);
    for (int i = 0; i < 5; i++) {
        char item[8];
        snprintf(item, sizeof item, "i%d", i);
        CHECK(other->ops->q_enqueue(other, id, K(item)) == ST_OK, "enqueue from elsewhere");
    }
    CHECK(b->ops->q_size(b, id) == 5, "size");
    for (int i = 0; i < 200 && atomic_load(&d->posted) - posted0 < 5; i++) sleep_ms(5);
    sleep_ms(50);
    CHECK(atomic_load(&d->posted) - posted0 == 5, "one notification per item: %llu",
          (unsigned long long)(atomic_load(&d->posted) - posted0));
    for (int i = 0; i < 5; i++) {
        char item[8];
        snprintf(item, sizeof item, "i%d", i);
        CHECK(b->ops->q_dequeue(b, id, &out) == ST_OK && out.len == strlen(item) &&
                  !memcmp(out.p, item, out.len),
              "FIFO");
    }
    CHECK(b->ops->q_dequeue(b, id, &out) == ST_EMPTY, "drained");
    /* the last registrant wins: the other process takes the queue */
    pw_dispatcher *d2 = pw_dispatcher_new();
    pw_queue_owner o2 = {d2, 8, 1};
    CHECK(other->ops->q_register(other, &s, K("items"), &o2, 1, &created, &id2) == ST_OK &&
              id2 == id,
          "take over");
    uint64_t p1 = atomic_load(&d->posted), p2 = atomic_load(&d2->posted);
    b->ops->q_enqueue(b, id, K("z"));
    for (int i = 0; i < 200 && atomic_load(&d2->posted) == p2; i++) sleep_ms(5);
    sleep_ms(30);
    CHECK(atomic_load(&d2->posted) == p2 + 1 && atomic_load(&d->posted) == p1,
          "the last registrant is notified, only it");
    b->ops->destroy(b);
    other->ops->destroy(other);
    pw_dispatcher_free(d);
    pw_dispatcher_free(d2);
    buf_free(&s);
    buf_free(&out);
}

static pw_backend *shared_b;

static void *cas_worker(void *arg) {
    (void)arg;
    pw_buf s = scope_of("cas"), out = {0};
    for (int i = 0; i < INCREMENTS;) {
        uint32_t cas = 0;
        uint64_t v = 0;
        int st = shared_b->ops->get(shared_b, &s, K("n"), &out, &cas);
        if (st == ST_OK && out.len == 8) memcpy(&v, out.p, 8);
        else if (st != ST_NOT_FOUND) continue;
        v++;
        if (shared_b->ops->set(shared_b, &s, K("n"), (uint8_t *)&v, 8, cas) == ST_OK) i++;
    }
    buf_free(&s);
    buf_free(&out);
    return NULL;
}

static void test_threads(void) {
    /* A set that times out may still be applied (and the worker would count it again):
     * a timeout no busy machine reaches, for an exact total. */
    shared_b = open_t("t5", 0, 0, 10000000);
    {
        /* a missing key reads as cas 0, which writes unconditionally (Envoy): start from 0 */
        pw_buf s0 = scope_of("cas");
        uint64_t zero = 0;
        shared_b->ops->set(shared_b, &s0, K("n"), (uint8_t *)&zero, 8, 0);
        buf_free(&s0);
    }
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, cas_worker, NULL);
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    pw_buf s = scope_of("cas"), out = {0};
    uint64_t v = 0;
    CHECK(shared_b->ops->get(shared_b, &s, K("n"), &out, &(uint32_t){0}) == ST_OK && out.len == 8,
          "counter");
    if (out.len == 8) memcpy(&v, out.p, 8);
    CHECK(v == THREADS * INCREMENTS, "exact total: %llu", (unsigned long long)v);
    CHECK(shared_b->unavailable == 0, "no failures");
    shared_b->ops->destroy(shared_b);
    buf_free(&s);
    buf_free(&out);
}

static void test_outage(void) {
    pw_backend *b = open_t("t6", 0, 0, OUTAGE_TIMEOUT_US);
    pw_buf s = scope_of("o"), out = {0};
    pw_dispatcher *d = pw_dispatcher_new();
    pw_queue_owner o = {d, 1, 1};
    uint32_t id = 0;
    int created;
    CHECK(b->ops->set(b, &s, K("k"), K("v"), 0) == ST_OK, "before");
    CHECK(b->ops->q_register(b, &s, K("q"), &o, 1, &created, &id) == ST_OK, "register");
    for (int i = 0; i < 400 && !pw_redis_stat(b, PW_REDIS_SUBSCRIBED); i++) sleep_ms(5);
    CHECK(pw_redis_stat(b, PW_REDIS_SUBSCRIBED) == 1, "subscribed");
    stop_server(SIGSTOP);
    double worst = 0, t0 = now_s();
    int fails = 0, n = 0, slow = 0;
    while (now_s() - t0 < 0.6) {
        double a = now_s();
        int st = b->ops->get(b, &s, K("k"), &out, &(uint32_t){0});
        double took = now_s() - a;
        if (took > worst) worst = took;
        slow += took > OUTAGE_TIMEOUT_US / 1e6 + 0.03;
        fails += st == ST_INTERNAL_FAILURE;
        n++;
    }
    CHECK(fails == n, "every call fails while stopped (%d of %d)", fails, n);
    /* a busy machine may stall a call or two; a call blocking past its deadline would
     * show in every probe */
    CHECK(slow <= 2, "calls past the timeout: %d (worst %.3f s)", slow, worst);
    CHECK(n > 50, "calls in backoff answer at once (%d calls in 0.6 s)", n);
    CHECK(b->unavailable >= (uint64_t)n, "counted: %llu", (unsigned long long)b->unavailable);
    stop_server(SIGCONT);
    double t1 = now_s();
    int st;
    while ((st = b->ops->get(b, &s, K("k"), &out, &(uint32_t){0})) != ST_OK && now_s() - t1 < 3)
        sleep_ms(5);
    CHECK(st == ST_OK, "recovers after SIGCONT");
    /* killed and restarted: state is gone (no persistence), the backend works again and
     * its subscriber comes back */
    stop_server(SIGKILL);
    CHECK(b->ops->set(b, &s, K("k"), K("v"), 0) == ST_INTERNAL_FAILURE, "down");
    start_server();
    t1 = now_s();
    while ((st = b->ops->set(b, &s, K("k"), K("v2"), 0)) != ST_OK && now_s() - t1 < 3)
        sleep_ms(5);
    CHECK(st == ST_OK, "recovers after a restart");
    CHECK(b->ops->q_register(b, &s, K("q"), &o, 1, &created, &id) == ST_OK, "register again");
    for (int i = 0; i < 400 && pw_redis_stat(b, PW_REDIS_SUBSCRIBED) < 2; i++) sleep_ms(5);
    CHECK(pw_redis_stat(b, PW_REDIS_SUBSCRIBED) >= 2, "resubscribed (connects %llu, flushed %llu)",
          (unsigned long long)pw_redis_stat(b, PW_REDIS_CONNECTS),
          (unsigned long long)pw_redis_stat(b, PW_REDIS_FLUSHED));
    uint64_t p0 = atomic_load(&d->posted);
    b->ops->q_enqueue(b, id, K("after"));
    for (int i = 0; i < 200 && atomic_load(&d->posted) == p0; i++) sleep_ms(5);
    CHECK(atomic_load(&d->posted) >= p0 + 1, "notified after the restart");
    b->ops->destroy(b);
    pw_dispatcher_free(d);
    buf_free(&s);
    buf_free(&out);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    port = free_port();
    start_server();
    if (!reachable()) {
        fprintf(stderr, "redis-server did not start\n");
        return 2;
    }
    test_urls();
    test_data();
    test_cap();
    test_queues();
    test_threads();
    test_outage();
    stop_server(SIGTERM);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("redis backend: all checks passed\n");
    return 0;
}
