/* The core driven from C inside the benchmark's own process: ROUNDS lifecycles on a VM the
 * Python host made, through the same core entry points and the same flat header form the
 * Python API uses (bench/test_lifecycle_bench.py builds this and calls it with ctypes,
 * which releases the GIL for the call). Timed in alternation with the Python API's loop on
 * the same thread, VM and core, it leaves only the Python layer between the two figures;
 * bench/driver.c is the same lifecycle in a process without Python at all.
 *
 * The core's functions come as addresses (from the cffi module), so this links against
 * nothing. Returns how many lifecycles saw an error. */
#include "../csrc/pw.h"

long run_lifecycles(void *start, void *headers, void *data, void *finish, pw_vm *vm, uint32_t root,
                    const uint8_t *req, size_t req_len, int req_n, const uint8_t *resp,
                    size_t resp_len, int resp_n, long rounds) {
    /* The core's own declarations (pw.h) give the types. */
    __typeof__(&pw_http_start) st = (__typeof__(&pw_http_start))start;
    __typeof__(&pw_http_headers) hd = (__typeof__(&pw_http_headers))headers;
    __typeof__(&pw_http_data) dt = (__typeof__(&pw_http_data))data;
    __typeof__(&pw_http_finish) fin = (__typeof__(&pw_http_finish))finish;
    long errors = 0;
    for (long i = 0; i < rounds; i++) {
        uint32_t id = 0;
        int f = st(vm, root, req, req_len, req_n, 0, &id);
        f |= dt(vm, id, PW_DIR_REQUEST, (const uint8_t *)"hello", 5, 1);
        f |= hd(vm, id, PW_DIR_RESPONSE, resp, resp_len, resp_n, 0);
        f |= dt(vm, id, PW_DIR_RESPONSE, (const uint8_t *)"world", 5, 1);
        f |= fin(vm, id);
        errors += f < 0;
    }
    return errors;
}
