/* The core driven from C inside the benchmark's own process: ROUNDS lifecycles on a VM the
 * Python host made, through the same core entry points and the same flat header form the
 * Python API uses (bench/test_lifecycle_bench.py builds this and calls it with ctypes,
 * which releases the GIL for the call). Timed in alternation with the Python API's loop on
 * the same thread, VM and core, it leaves only the Python layer between the two figures;
 * bench/driver.c is the same lifecycle in a process without Python at all.
 *
 * The core's functions come as addresses (from the cffi module), so this links against
 * nothing. Returns how many lifecycles saw an error. */
#include <stddef.h>
#include <stdint.h>

typedef int (*start_fn)(void *vm, uint32_t root, const uint8_t *h, size_t len, int nflat, int eos,
                        uint32_t *out_id);
typedef int (*headers_fn)(void *vm, uint32_t id, int dir, const uint8_t *h, size_t len, int nflat,
                          int eos);
typedef int (*data_fn)(void *vm, uint32_t id, int dir, const uint8_t *d, size_t len, int eos);
typedef int (*finish_fn)(void *vm, uint32_t id);

long run_lifecycles(void *start, void *headers, void *data, void *finish, void *vm, uint32_t root,
                    const uint8_t *req, size_t req_len, int req_n, const uint8_t *resp,
                    size_t resp_len, int resp_n, long rounds) {
    start_fn st = (start_fn)start;
    headers_fn hd = (headers_fn)headers;
    data_fn dt = (data_fn)data;
    finish_fn fin = (finish_fn)finish;
    long errors = 0;
    for (long i = 0; i < rounds; i++) {
        uint32_t id = 0;
        int f = st(vm, root, req, req_len, req_n, 0, &id);
        f |= dt(vm, id, 0, (const uint8_t *)"hello", 5, 1);
        f |= hd(vm, id, 1, resp, resp_len, resp_n, 0);
        f |= dt(vm, id, 1, (const uint8_t *)"world", 5, 1);
        f |= fin(vm, id);
        errors += f < 0;
    }
    return errors;
}
