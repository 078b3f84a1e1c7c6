/* Growable byte buffers. Allocation failure is reported, never ignored. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int buf_reserve(pw_buf *b, size_t cap) {
    if (cap <= b->cap) return 0;
    size_t n = b->cap ? b->cap : 64;
    while (n < cap) {
        if (n > SIZE_MAX / 2) return -1;
        n *= 2;
    }
    uint8_t *p = realloc(b->p, n);
    if (!p) return -1;
    b->p = p;
    b->cap = n;
    return 0;
}

int buf_set(pw_buf *b, const uint8_t *d, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memmove(b->p, d, n);
    b->len = n;
    return 0;
}

int buf_append(pw_buf *b, const uint8_t *d, size_t n) {
    if (n > SIZE_MAX - b->len || buf_reserve(b, b->len + n)) return -1;
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

int buf_prepend(pw_buf *b, const uint8_t *d, size_t n) {
    if (n > SIZE_MAX - b->len || buf_reserve(b, b->len + n)) return -1;
    if (n) {
        memmove(b->p + n, b->p, b->len);
        memcpy(b->p, d, n);
    }
    b->len += n;
    return 0;
}

void buf_drain_front(pw_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void buf_move_append(pw_buf *dst, pw_buf *src) {
    if (!src->len) return;
    if (!dst->len) {
        pw_buf t = *dst;
        *dst = *src;
        *src = t;
        src->len = 0;
        return;
    }
    if (buf_append(dst, src->p, src->len) == 0) src->len = 0;
}

void buf_free(pw_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int pw_result_set(void *result, const uint8_t *data, size_t len) {
    return buf_set((pw_buf *)result, data, len) ? PW_ERR : PW_OK;
}

void pw_bytes_free(uint8_t *p) { free(p); }
