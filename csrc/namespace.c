/* Host namespaces: what keeps one Host's shared state apart from another's in the same
 * process. A VM's shared data and queues live under a scope, the pair (namespace, vm_id)
 * written as one opaque key (namespace length u32 LE, namespace, vm_id) that shared.c and
 * queue.c compare as bytes; metrics carry their namespace (metrics.c). The default
 * namespace is "": plain hosts share everything process-wide, as Envoy's VMs do. Which
 * store a scope uses (in-process or a backend) is backend.c's. */
#include <string.h>

#include "internal.h"

int scope_make(pw_buf *out, const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl) {
    uint8_t len[4];
    wr_le(len, (uint32_t)nsl, 4);
    buf_clear(out);
    return buf_append(out, len, 4) || buf_append(out, ns, nsl) || buf_append(out, vm_id, vl);
}
