/*
 * AF_VSOCK stream sockets for Node.
 *
 * libuv cannot classify an AF_VSOCK fd (uv_guess_handle says UNKNOWN), so
 * net.Socket refuses it.  This addon owns the fd, watches it with a uv_poll_t
 * and performs the non-blocking syscalls on request from JS.  Readiness is
 * reported to JS; JS decides what to do with it.  Syscall failures are
 * returned as negative errno numbers instead of thrown, so the hot path never
 * allocates exceptions and the TypeScript wrapper builds Node-style errors in
 * one place.
 *
 * Lifetime: a vs_handle is owned jointly by its JS wrapper and by libuv.  It
 * is freed only once the wrapper has been finalized AND the poll handle's
 * close callback has run (or the poll was never initialised).  While the poll
 * is active the wrapper is held by a strong reference so that events always
 * find a live object; when idle the reference is weak so that a forgotten
 * socket is collected and its fd closed by the finalizer.
 */
#define _GNU_SOURCE /* accept4 */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>
#include <uv.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <unistd.h>

#include <linux/vm_sockets.h>
#if __has_include(<linux/close_range.h>)
#include <linux/close_range.h>
#endif

#define READ_CHUNK (64 * 1024)
#define MAX_IOV 64

typedef struct vs_handle vs_handle;

typedef struct {
  uv_loop_t *loop;
  napi_ref ctor;
  char *scratch; /* shared read buffer: reads are copied out at once */
  vs_handle *live; /* handles whose poll is not yet closing */
  int pending_closes; /* uv_close issued, callback not yet run */
  int nhandles; /* handles not yet freed: they keep the instance alive */
  int tearing_down;
  int env_gone; /* instance-data finalizer ran */
  napi_async_cleanup_hook_handle cleanup;
} vs_instance;

struct vs_handle {
  vs_instance *inst;
  napi_env env;
  int fd;
  uv_poll_t poll;
  int poll_ready;  /* uv_poll_init succeeded: must be uv_close'd */
  int poll_closed; /* close callback ran */
  int js_gone;     /* wrapper finalized */
  int events;      /* events currently being watched */
  int in_callback;
  int actx_destroy_pending;
  napi_ref self;
  napi_async_context actx;
  vs_handle *prev, *next;
};

#define CHECK_NAPI(env, call)                                                  \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      napi_throw_error((env), "ERR_VSOCK_NAPI", "N-API call failed: " #call);  \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

/* ---------- small value helpers ---------- */

static napi_value num(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

static napi_value undef(napi_env env) {
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

static napi_value neg_errno(napi_env env) { return num(env, -(double)errno); }

static int arg_u32(napi_env env, napi_value v, const char *what, uint32_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 4294967295.0 ||
      d != (double)(uint32_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an integer in [0, 2^32-1]", what);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = (uint32_t)d;
  return 1;
}

static napi_value addr_pair(napi_env env, const struct sockaddr_vm *sa) {
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, num(env, sa->svm_cid));
  napi_set_element(env, arr, 1, num(env, sa->svm_port));
  return arr;
}

static void fill_addr(struct sockaddr_vm *sa, uint32_t cid, uint32_t port) {
  memset(sa, 0, sizeof *sa);
  sa->svm_family = AF_VSOCK;
  sa->svm_cid = cid;
  sa->svm_port = port;
}

static int new_socket(void) {
  return socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

/* ---------- handle lifetime ---------- */

static void inst_release(vs_instance *inst) {
  inst->nhandles--;
  if (inst->env_gone && inst->nhandles == 0) {
    free(inst->scratch);
    free(inst);
  }
}

static void list_unlink(vs_handle *h) {
  if (h->prev) h->prev->next = h->next;
  else if (h->inst->live == h) h->inst->live = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
}

static void maybe_free(vs_handle *h) {
  vs_instance *inst = h->inst;
  if (!h->js_gone || (h->poll_ready && !h->poll_closed)) return;
  free(h);
  inst_release(inst);
}

static void on_poll_closed(uv_handle_t *uvh) {
  vs_handle *h = uvh->data;
  vs_instance *inst = h->inst;
  h->poll_closed = 1;
  inst->pending_closes--;
  if (inst->tearing_down && inst->pending_closes == 0 && inst->cleanup) {
    napi_remove_async_cleanup_hook(inst->cleanup);
    inst->cleanup = NULL;
  }
  maybe_free(h);
}

/* The wrapper is pinned (strong reference) exactly while events are watched,
 * so callbacks always find it and an idle, forgotten handle can be collected.
 * Call before updating h->events.  Skipped once the wrapper is gone. */
static void set_pinned(vs_handle *h, int pinned) {
  uint32_t count = 0;
  if (h->js_gone || h->self == NULL) return;
  if (pinned && h->events == 0) napi_reference_ref(h->env, h->self, &count);
  if (!pinned && h->events != 0) napi_reference_unref(h->env, h->self, &count);
}

static void destroy_actx(vs_handle *h) {
  if (h->actx == NULL) return;
  if (h->in_callback) {
    h->actx_destroy_pending = 1; /* napi_make_callback is still using it */
    return;
  }
  /* Safe during env teardown too (Node skips the destroy hook then); only a
   * finalized napi_env is off limits. */
  if (!h->inst->env_gone) napi_async_destroy(h->env, h->actx);
  h->actx = NULL;
}

/* Idempotent: stops polling, schedules the poll handle's close and closes the
 * fd.  Closing the fd right after uv_close is explicitly allowed by libuv. */
static void close_handle(vs_handle *h, int js_context) {
  if (h->fd < 0) return;
  if (js_context) set_pinned(h, 0);
  h->events = 0;
  if (h->poll_ready) {
    uv_poll_stop(&h->poll);
    uv_close((uv_handle_t *)&h->poll, on_poll_closed);
    h->inst->pending_closes++;
  }
  list_unlink(h);
  close(h->fd);
  h->fd = -1;
  if (js_context) destroy_actx(h);
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  vs_handle *h = data;
  (void)env;
  (void)hint;
  close_handle(h, 0);
  destroy_actx(h);
  if (h->self) napi_delete_reference(env, h->self);
  h->self = NULL;
  h->js_gone = 1;
  maybe_free(h);
}

/* Called by Node during environment teardown (process or worker exit); it
 * waits until every poll handle we close here has finished closing. */
static void teardown_hook(napi_async_cleanup_hook_handle hook, void *arg) {
  vs_instance *inst = arg;
  inst->tearing_down = 1;
  while (inst->live) close_handle(inst->live, 0);
  if (inst->pending_closes == 0) {
    napi_remove_async_cleanup_hook(hook);
    inst->cleanup = NULL;
  }
}

static void finalize_instance(napi_env env, void *data, void *hint) {
  vs_instance *inst = data;
  (void)hint;
  if (inst->ctor) napi_delete_reference(env, inst->ctor);
  inst->ctor = NULL;
  /* Handles still waiting for their close callback keep the memory alive. */
  inst->env_gone = 1;
  inst->nhandles++;
  inst_release(inst);
}

/* ---------- poll callback: readiness -> JS ---------- */

static void on_poll(uv_poll_t *p, int status, int events) {
  vs_handle *h = p->data;
  napi_env env = h->env;
  napi_handle_scope scope;
  napi_value self, fn, argv[2], result;
  napi_valuetype type;

  if (h->js_gone || h->self == NULL) return;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  if (napi_get_reference_value(env, h->self, &self) != napi_ok || self == NULL)
    goto out;
  if (status < 0) {
    /* libuv stops the watcher itself on POLLERR; mirror that here. */
    set_pinned(h, 0);
    h->events = 0;
  }
  if (napi_get_named_property(env, self, "onevent", &fn) != napi_ok) goto out;
  if (napi_typeof(env, fn, &type) != napi_ok || type != napi_function) goto out;
  argv[0] = num(env, status);
  argv[1] = num(env, events);
  h->in_callback = 1;
  napi_status st = napi_make_callback(env, h->actx, self, fn, 2, argv, &result);
  h->in_callback = 0;
  if (st == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  if (h->actx_destroy_pending) {
    h->actx_destroy_pending = 0;
    destroy_actx(h);
  }
out:
  napi_close_handle_scope(env, scope);
}

/* ---------- creating handle objects ---------- */

static napi_value wrap_fd(napi_env env, vs_instance *inst, int fd) {
  napi_value ctor, ext, obj, name;
  vs_handle *h = calloc(1, sizeof *h);
  if (h == NULL) {
    close(fd);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  h->inst = inst;
  h->env = env;
  h->fd = fd;
  int rc = uv_poll_init(inst->loop, &h->poll, fd);
  if (rc != 0) {
    close(fd);
    free(h);
    napi_throw_error(env, uv_err_name(rc), "uv_poll_init failed");
    return NULL;
  }
  h->poll.data = h;
  h->poll_ready = 1;
  inst->nhandles++;
  h->next = inst->live;
  if (inst->live) inst->live->prev = h;
  inst->live = h;

  /* From here on the wrapper's finalizer owns h, so failures just return. */
  CHECK_NAPI(env, napi_get_reference_value(env, inst->ctor, &ctor));
  CHECK_NAPI(env, napi_create_external(env, h, NULL, NULL, &ext));
  CHECK_NAPI(env, napi_new_instance(env, ctor, 1, &ext, &obj));
  CHECK_NAPI(env, napi_create_reference(env, obj, 0, &h->self));
  CHECK_NAPI(env, napi_create_string_utf8(env, "VsockHandle", NAPI_AUTO_LENGTH, &name));
  CHECK_NAPI(env, napi_async_init(env, NULL, name, &h->actx));
  return obj;
}

static napi_value handle_ctor(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], self;
  napi_valuetype type;
  void *ptr;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_external) {
    napi_throw_type_error(env, "ERR_ILLEGAL_CONSTRUCTOR", "VsockHandle is created by the addon");
    return NULL;
  }
  CHECK_NAPI(env, napi_get_value_external(env, argv[0], &ptr));
  if (napi_wrap(env, self, ptr, finalize_handle, NULL, NULL) != napi_ok) {
    /* Nobody else owns h yet: undo what wrap_fd did. */
    vs_handle *h = ptr;
    close_handle(h, 0);
    h->js_gone = 1;
    maybe_free(h);
    napi_throw_error(env, "ERR_VSOCK_NAPI", "napi_wrap failed");
    return NULL;
  }
  return self;
}

/* Unwraps `this` and collects up to `want` arguments. */
static vs_handle *this_handle(napi_env env, napi_callback_info info, size_t want,
                              napi_value *argv) {
  size_t argc = want;
  napi_value self;
  void *ptr = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, &self, NULL) != napi_ok) return NULL;
  if (napi_unwrap(env, self, &ptr) != napi_ok || ptr == NULL) {
    napi_throw_type_error(env, "ERR_INVALID_THIS", "not a VsockHandle");
    return NULL;
  }
  for (size_t i = argc; i < want; i++) napi_get_undefined(env, &argv[i]);
  return ptr;
}

/* ---------- handle methods ---------- */

static napi_value m_watch(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint32_t ev;
  vs_handle *h = this_handle(env, info, 1, argv);
  if (h == NULL || !arg_u32(env, argv[0], "events", &ev)) return NULL;
  ev &= UV_READABLE | UV_WRITABLE;
  if (h->fd < 0) return num(env, -EBADF);
  if (ev == (uint32_t)h->events) return num(env, 0);
  if (ev == 0) {
    uv_poll_stop(&h->poll);
    set_pinned(h, 0);
    h->events = 0;
    return num(env, 0);
  }
  int rc = uv_poll_start(&h->poll, (int)ev, on_poll);
  if (rc != 0) return num(env, rc); /* libuv codes are negative errno on Linux */
  set_pinned(h, 1);
  h->events = (int)ev;
  return num(env, 0);
}

static napi_value m_read(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  if (h->fd < 0) return num(env, -EBADF);
  ssize_t n;
  do n = read(h->fd, h->inst->scratch, READ_CHUNK);
  while (n < 0 && errno == EINTR);
  if (n < 0) return neg_errno(env);
  if (n == 0) {
    napi_get_null(env, &out);
    return out;
  }
  CHECK_NAPI(env, napi_create_buffer_copy(env, (size_t)n, h->inst->scratch, NULL, &out));
  return out;
}

/* writev(chunks: Buffer[]) -> bytes written | -errno.  The caller trims
 * what was written and calls again; at most MAX_IOV chunks go per call. */
static napi_value m_writev(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct iovec iov[MAX_IOV];
  uint32_t count;
  bool is_array;
  vs_handle *h = this_handle(env, info, 1, argv);
  if (h == NULL) return NULL;
  if (napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "chunks must be an array of Buffers");
    return NULL;
  }
  CHECK_NAPI(env, napi_get_array_length(env, argv[0], &count));
  if (count > MAX_IOV) count = MAX_IOV;
  for (uint32_t i = 0; i < count; i++) {
    napi_value el;
    bool is_buf;
    CHECK_NAPI(env, napi_get_element(env, argv[0], i, &el));
    if (napi_is_buffer(env, el, &is_buf) != napi_ok || !is_buf) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "chunks must be an array of Buffers");
      return NULL;
    }
    CHECK_NAPI(env, napi_get_buffer_info(env, el, &iov[i].iov_base, &iov[i].iov_len));
  }
  if (h->fd < 0) return num(env, -EBADF);
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = count;
  ssize_t n;
  do n = sendmsg(h->fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  /* A character device (a virtio-serial port) is not a socket: plain writev. */
  if (n < 0 && errno == ENOTSOCK) {
    do n = writev(h->fd, iov, (int)count);
    while (n < 0 && errno == EINTR);
  }
  return n < 0 ? neg_errno(env) : num(env, (double)n);
}

/* accept() -> [handle, peerCid, peerPort] | -errno */
static napi_value m_accept(napi_env env, napi_callback_info info) {
  napi_value argv[1], out, obj;
  struct sockaddr_vm sa;
  socklen_t len = sizeof sa;
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  if (h->fd < 0) return num(env, -EBADF);
  memset(&sa, 0, sizeof sa);
  int fd;
  do fd = accept4(h->fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return neg_errno(env);
  obj = wrap_fd(env, h->inst, fd);
  if (obj == NULL) return NULL;
  CHECK_NAPI(env, napi_create_array_with_length(env, 3, &out));
  napi_set_element(env, out, 0, obj);
  napi_set_element(env, out, 1, num(env, sa.svm_cid));
  napi_set_element(env, out, 2, num(env, sa.svm_port));
  return out;
}

/* Outcome of a non-blocking connect: 0 or -errno (SO_ERROR). */
static napi_value m_connect_error(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int err = 0;
  socklen_t len = sizeof err;
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  if (h->fd < 0) return num(env, -EBADF);
  if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return neg_errno(env);
  return num(env, -(double)err);
}

static napi_value m_shutdown(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  if (h->fd < 0) return num(env, -EBADF);
  return shutdown(h->fd, SHUT_WR) == 0 ? num(env, 0) : neg_errno(env);
}

static napi_value m_local_address(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_vm sa;
  socklen_t len = sizeof sa;
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  if (h->fd < 0) return num(env, -EBADF);
  memset(&sa, 0, sizeof sa);
  if (getsockname(h->fd, (struct sockaddr *)&sa, &len) != 0) return neg_errno(env);
  return addr_pair(env, &sa);
}

static napi_value m_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  close_handle(h, 1);
  return undef(env);
}

static napi_value m_set_ref(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  bool on;
  vs_handle *h = this_handle(env, info, 1, argv);
  if (h == NULL) return NULL;
  if (napi_get_value_bool(env, argv[0], &on) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "setRef expects a boolean");
    return NULL;
  }
  if (h->fd >= 0 && h->poll_ready) {
    if (on) uv_ref((uv_handle_t *)&h->poll);
    else uv_unref((uv_handle_t *)&h->poll);
  }
  return undef(env);
}

static napi_value m_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  vs_handle *h = this_handle(env, info, 0, argv);
  if (h == NULL) return NULL;
  return num(env, h->fd);
}

/* ---------- module functions ---------- */

static vs_instance *get_inst(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return data;
}

/* probe() -> 0 if the kernel can create AF_VSOCK stream sockets, else -errno */
static napi_value f_probe(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = new_socket();
  if (fd < 0) return neg_errno(env);
  close(fd);
  return num(env, 0);
}

/* localCid() -> cid | -errno; the second element names the failing step */
static napi_value f_local_cid(napi_env env, napi_callback_info info) {
  napi_value out;
  unsigned int cid = 0;
  const char *step = "open /dev/vsock";
  double result;
  (void)info;
  int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    result = -(double)errno;
  } else {
    step = "ioctl IOCTL_VM_SOCKETS_GET_LOCAL_CID";
    result = ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0 ? -(double)errno : cid;
    close(fd);
  }
  napi_value s;
  CHECK_NAPI(env, napi_create_array_with_length(env, 2, &out));
  CHECK_NAPI(env, napi_create_string_utf8(env, step, NAPI_AUTO_LENGTH, &s));
  napi_set_element(env, out, 0, num(env, result));
  napi_set_element(env, out, 1, s);
  return out;
}

/* Failed setup steps report [-errno, "syscall"] so JS can name the call. */
static napi_value fail_step(napi_env env, int fd, const char *step) {
  napi_value out, s;
  int saved = errno;
  if (fd >= 0) close(fd);
  CHECK_NAPI(env, napi_create_array_with_length(env, 2, &out));
  CHECK_NAPI(env, napi_create_string_utf8(env, step, NAPI_AUTO_LENGTH, &s));
  napi_set_element(env, out, 0, num(env, -(double)saved));
  napi_set_element(env, out, 1, s);
  return out;
}

/* listen(cid, port, backlog) -> handle | [-errno, syscall] */
static napi_value f_listen(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t cid, port, backlog;
  struct sockaddr_vm sa;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || !arg_u32(env, argv[0], "cid", &cid) || !arg_u32(env, argv[1], "port", &port) ||
      !arg_u32(env, argv[2], "backlog", &backlog))
    return NULL;
  if (backlog > INT_MAX) backlog = INT_MAX;
  int fd = new_socket();
  if (fd < 0) return fail_step(env, -1, "socket");
  fill_addr(&sa, cid, port);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return fail_step(env, fd, "bind");
  if (listen(fd, (int)backlog) != 0) return fail_step(env, fd, "listen");
  return wrap_fd(env, get_inst(env), fd);
}

/* connect(cid, port, timeoutMs) -> handle (connect in progress) | [-errno, syscall] */
static napi_value f_connect(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t cid, port, timeout_ms;
  struct sockaddr_vm sa;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || !arg_u32(env, argv[0], "cid", &cid) || !arg_u32(env, argv[1], "port", &port) ||
      !arg_u32(env, argv[2], "timeoutMs", &timeout_ms))
    return NULL;
  int fd = new_socket();
  if (fd < 0) return fail_step(env, -1, "socket");
  if (timeout_ms > 0) {
    /* Keep the kernel's own connect timer in step with the caller's, so a
     * timed-out attempt is also abandoned by the kernel. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv) != 0)
      return fail_step(env, fd, "setsockopt SO_VM_SOCKETS_CONNECT_TIMEOUT");
  }
  fill_addr(&sa, cid, port);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS &&
      errno != EINTR)
    return fail_step(env, fd, "connect");
  return wrap_fd(env, get_inst(env), fd);
}

/* testPair() -> [handle, handle] | [-errno, syscall]
 * A connected AF_UNIX pair behind the same handle type, so the stream code
 * can be exercised end to end on machines without a vsock loopback. */
/* openDevice(path) -> handle | -errno: a character device such as
 * /dev/virtio-ports/<name>, non-blocking and watched like a socket, so that
 * closing it never leaves a blocked read() holding the port open. */
static napi_value f_open_device(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char path[4096];
  size_t len;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len == 0 || len >= sizeof path - 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "path must be a non-empty string");
    return NULL;
  }
  int fd;
  do fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return neg_errno(env);
  return wrap_fd(env, get_inst(env), fd);
}

/* mount(source, target, fstype, data) -> 0 | -errno; umount(target, lazy) -> 0 | -errno.
 * The guest's mount agent mounts the document share the moment the host plugs
 * it in; starting mount(8) costs 50-85 ms per try under emulation. */
static bool arg_string(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len;
  return napi_get_value_string_utf8(env, v, buf, size, &len) == napi_ok && len < size - 1;
}

static napi_value f_mount(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  char source[256], target[4096], fstype[64], data[256];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4 || !arg_string(env, argv[0], source, sizeof source) || !arg_string(env, argv[1], target, sizeof target) ||
      !arg_string(env, argv[2], fstype, sizeof fstype) || !arg_string(env, argv[3], data, sizeof data)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "mount(source, target, fstype, data) takes four strings");
    return NULL;
  }
  if (mount(source, target, fstype, MS_NOSUID | MS_NODEV, data[0] ? data : NULL) != 0) return neg_errno(env);
  return num(env, 0);
}

static napi_value f_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char target[4096];
  bool lazy = false;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !arg_string(env, argv[0], target, sizeof target)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "umount(target, lazy) takes a string");
    return NULL;
  }
  if (argc > 1) napi_get_value_bool(env, argv[1], &lazy);
  if (umount2(target, lazy ? MNT_DETACH : 0) != 0) return neg_errno(env);
  return num(env, 0);
}

static napi_value f_test_pair(napi_env env, napi_callback_info info) {
  napi_value out, a, b;
  int fds[2];
  (void)info;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
    return fail_step(env, -1, "socketpair");
  a = wrap_fd(env, get_inst(env), fds[0]);
  if (a == NULL) {
    close(fds[1]);
    return NULL;
  }
  b = wrap_fd(env, get_inst(env), fds[1]);
  if (b == NULL) return NULL;
  CHECK_NAPI(env, napi_create_array_with_length(env, 2, &out));
  napi_set_element(env, out, 0, a);
  napi_set_element(env, out, 1, b);
  return out;
}

/* ---------- descriptors and children ----------
 *
 * Node opens everything close-on-exec, but not every native module does:
 * dbus-next's usocket makes its D-Bus socket with a plain socket() and takes
 * passed fds without MSG_CMSG_CLOEXEC.  A child that inherits the daemon's
 * D-Bus connection (virtiofsd outlives the daemon) keeps the daemon's bus
 * name owned after the daemon is gone, and no new daemon can start. */

static int mark_cloexec(int fd) {
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return -errno;
  if (flags & FD_CLOEXEC) return 0;
  if (fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0) return -errno;
  return 1;
}

/* setCloexec(fd) -> 1 if it was not close-on-exec, 0 if it was | -errno */
static napi_value f_set_cloexec(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t fd;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !arg_u32(env, argv[0], "fd", &fd)) return NULL;
  if (fd > INT_MAX) return num(env, -EBADF);
  return num(env, mark_cloexec((int)fd));
}

/* cloexecFrom(minFd) -> how many open fds >= minFd were not close-on-exec | -errno
 * Called just before every spawn, so a child gets only the stdio its spawn
 * hands it.  /proc/self/fd gives the count (a leak worth knowing about);
 * close_range(CLOSE_RANGE_CLOEXEC) is the fallback without /proc. */
static napi_value f_cloexec_from(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t min_fd;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !arg_u32(env, argv[0], "minFd", &min_fd)) return NULL;
  DIR *dir = opendir("/proc/self/fd");
  if (dir == NULL) {
#if defined(SYS_close_range) && defined(CLOSE_RANGE_CLOEXEC)
    if (syscall(SYS_close_range, min_fd, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return num(env, 0);
#endif
    return neg_errno(env);
  }
  int own = dirfd(dir);
  int marked = 0;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    char *end;
    long fd = strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd < (long)min_fd || fd > INT_MAX || fd == own) continue;
    if (mark_cloexec((int)fd) == 1) marked++;
  }
  closedir(dir);
  return num(env, marked);
}


/* ---------- taps and descriptor passing ----------
 *
 * A bridge or vm-only NIC is a persistent tap the privileged helper made
 * and handed to one uid.  The helper attaches to it (TUNSETIFF on
 * /dev/net/tun, which the kernel allows the tap's owner) and passes the
 * queue's fd on; the daemon hands it to the VMM with SCM_RIGHTS, so
 * neither the daemon nor the VMM needs CAP_NET_ADMIN. */

/* tapOpen(name) -> fd | -errno: one queue of the existing persistent tap `name`,
 * IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as QEMU and cloud-hypervisor take it. */
static napi_value f_tap_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char name[IFNAMSIZ + 1];
  size_t len;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok || len == 0 || len >= IFNAMSIZ) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "tapOpen(name) takes an interface name of 1-15 bytes");
    return NULL;
  }
  int fd;
  do fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return neg_errno(env);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, name, len);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
    int e = errno;
    close(fd);
    return num(env, -(double)e);
  }
  /* With CAP_NET_ADMIN, TUNSETIFF on a free name makes a new tap; only an
   * existing, persistent one (the helper's) is meant, so that is ENODEV. */
  if (ioctl(fd, TUNGETIFF, &ifr) != 0 || !(ifr.ifr_flags & IFF_PERSIST)) {
    close(fd);
    return num(env, -ENODEV);
  }
  return num(env, fd);
}

#define MAX_PASSED_FDS 8

/* sendFds(sockfd, buffer, [fd...]) -> bytes sent | -errno: one sendmsg(2)
 * with the descriptors as SCM_RIGHTS on the first byte, non-blocking.  The
 * caller makes sure nothing else is queued on the socket first, so the
 * bytes keep their place in the stream. */
static napi_value f_send_fds(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t sock, count;
  void *data;
  size_t size;
  bool is_array;
  int fds[MAX_PASSED_FDS];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || !arg_u32(env, argv[0], "sockfd", &sock)) return NULL;
  if (napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok || size == 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sendFds: the data must be a non-empty Buffer");
    return NULL;
  }
  if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &count) != napi_ok ||
      count == 0 || count > MAX_PASSED_FDS) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "sendFds: between 1 and 8 descriptors");
    return NULL;
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value v;
    uint32_t fd;
    if (napi_get_element(env, argv[2], i, &v) != napi_ok || !arg_u32(env, v, "fd", &fd)) return NULL;
    if (fd > INT_MAX) return num(env, -EBADF);
    fds[i] = (int)fd;
  }
  char control[CMSG_SPACE(sizeof fds)];
  memset(control, 0, sizeof control);
  struct iovec iov = {.iov_base = data, .iov_len = size};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = CMSG_SPACE(count * sizeof(int))};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(count * sizeof(int));
  memcpy(CMSG_DATA(c), fds, count * sizeof(int));
  ssize_t n;
  do n = sendmsg((int)sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) return neg_errno(env);
  return num(env, (double)n);
}

/* ---------- init ---------- */

#define METHOD(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}

static napi_value init(napi_env env, napi_value exports) {
  napi_value ctor;
  vs_instance *inst = calloc(1, sizeof *inst);
  if (inst == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  inst->scratch = malloc(READ_CHUNK);
  if (inst->scratch == NULL || napi_get_uv_event_loop(env, &inst->loop) != napi_ok) {
    free(inst->scratch);
    free(inst);
    napi_throw_error(env, "ERR_VSOCK_INIT", "cannot initialise vsock addon");
    return NULL;
  }
  if (napi_set_instance_data(env, inst, finalize_instance, NULL) != napi_ok) {
    free(inst->scratch);
    free(inst);
    napi_throw_error(env, "ERR_VSOCK_INIT", "cannot initialise vsock addon");
    return NULL;
  }
  napi_property_descriptor methods[] = {
      METHOD("watch", m_watch),           METHOD("read", m_read),
      METHOD("writev", m_writev),         METHOD("accept", m_accept),
      METHOD("connectError", m_connect_error), METHOD("shutdown", m_shutdown),
      METHOD("localAddress", m_local_address), METHOD("close", m_close),
      METHOD("setRef", m_set_ref),        METHOD("fd", m_fd),
  };
  CHECK_NAPI(env, napi_define_class(env, "VsockHandle", NAPI_AUTO_LENGTH, handle_ctor, NULL,
                                    sizeof methods / sizeof methods[0], methods, &ctor));
  CHECK_NAPI(env, napi_create_reference(env, ctor, 1, &inst->ctor));
  CHECK_NAPI(env, napi_add_async_cleanup_hook(env, teardown_hook, inst, &inst->cleanup));

  napi_property_descriptor fns[] = {
      METHOD("probe", f_probe),   METHOD("localCid", f_local_cid),
      METHOD("listen", f_listen), METHOD("connect", f_connect),
      METHOD("testPair", f_test_pair),  METHOD("openDevice", f_open_device),
      METHOD("mount", f_mount),         METHOD("umount", f_umount),
      METHOD("setCloexec", f_set_cloexec), METHOD("cloexecFrom", f_cloexec_from),
      METHOD("tapOpen", f_tap_open),
      METHOD("sendFds", f_send_fds),
  };
  CHECK_NAPI(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
  napi_set_named_property(env, exports, "READABLE", num(env, UV_READABLE));
  napi_set_named_property(env, exports, "WRITABLE", num(env, UV_WRITABLE));
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
