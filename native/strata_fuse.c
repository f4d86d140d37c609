/*
 * strata_fuse: the /dev/fuse side of Strata's own FUSE transport (lib/fuse/kernel/).
 *
 * The JS-facing contract lives in lib/fuse/kernel/device.ts; this file implements exactly that.
 *
 * Why it looks the way it does:
 *  - One reader thread per session blocks in read(2) on /dev/fuse. Each request it reads is copied into a
 *    queue, and the JS thread is woken with uv_async_send. libuv coalesces wake-ups, so one wake-up drains
 *    EVERY request that arrived meanwhile: they reach JS as one Buffer holding the requests back to back
 *    (each starts with its fuse_in_header, whose `len` gives its size). That is the batching: under load the
 *    reader keeps reading while JS works, and JS pays one callback per batch instead of one hop per request.
 *  - Replies are written by the JS thread itself with writev (reply()): a write to /dev/fuse never blocks,
 *    so there is no second thread hop per request (fuse-native's libfuse 2 path makes two).
 *  - mount(2) is done here, without libfuse or fusermount: we run as root (CAP_SYS_ADMIN), and the device fd
 *    we opened is the connection.
 *  - Errors are returned as negative errnos (never thrown) on the paths the session loop uses per request.
 */
#include "strata_napi.h"

#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* Protocol 7.40 (Linux 6.9) names that Debian 12's linux/fuse.h (7.38) lacks; the values are kernel ABI. */
struct strata_fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
#define STRATA_FUSE_DEV_IOC_MAGIC 229
#define STRATA_FUSE_DEV_IOC_BACKING_OPEN _IOW(STRATA_FUSE_DEV_IOC_MAGIC, 1, struct strata_fuse_backing_map)
#define STRATA_FUSE_DEV_IOC_BACKING_CLOSE _IOW(STRATA_FUSE_DEV_IOC_MAGIC, 2, uint32_t)

static napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

static int get_i32(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok ? 0 : -1;
}

/* A malloc'd copy of a JS string, or NULL with an exception pending. */
static char *dup_string(napi_env env, napi_value v) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &length) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "expected a string");
    return NULL;
  }
  char *s = malloc(length + 1);
  if (s == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, v, s, length + 1, &length);
  return s;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Device and mount
 * ------------------------------------------------------------------------------------------------------------- */

/* openDevice(): the fd of a fresh /dev/fuse connection, or -errno. */
static napi_value open_device(napi_env env, napi_callback_info info) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  return make_int(env, fd < 0 ? -errno : fd);
}

/* mount(source, target, fstype, flags, data): 0 or -errno. */
static napi_value do_mount(napi_env env, napi_callback_info info) {
  GET_ARGS_OR(5, "mount needs 5 arguments");
  int32_t flags = 0;
  if (get_i32(env, argv[3], &flags) < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "flags must be a number");
    return NULL;
  }
  char *source = dup_string(env, argv[0]);
  char *target = source ? dup_string(env, argv[1]) : NULL;
  char *fstype = target ? dup_string(env, argv[2]) : NULL;
  char *data = fstype ? dup_string(env, argv[4]) : NULL;
  int rc = -1;
  if (data != NULL) rc = mount(source, target, fstype, (unsigned long)(uint32_t)flags, data) < 0 ? -errno : 0;
  free(source);
  free(target);
  free(fstype);
  free(data);
  if (data == NULL) return NULL;
  return make_int(env, rc);
}

/* umount(target, flags): 0 or -errno. */
static napi_value do_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t flags = 0;
  if (argc < 2 || get_i32(env, argv[1], &flags) < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "umount(target, flags)");
    return NULL;
  }
  char *target = dup_string(env, argv[0]);
  if (target == NULL) return NULL;
  int rc = umount2(target, flags) < 0 ? -errno : 0;
  free(target);
  return make_int(env, rc);
}

/* backingOpen(devFd, fd): the backing id for FOPEN_PASSTHROUGH, or -errno. */
static napi_value backing_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t dev = -1, fd = -1;
  if (argc < 2 || get_i32(env, argv[0], &dev) < 0 || get_i32(env, argv[1], &fd) < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "backingOpen(devFd, fd)");
    return NULL;
  }
  struct strata_fuse_backing_map map = {.fd = fd, .flags = 0, .padding = 0};
  int rc = ioctl(dev, STRATA_FUSE_DEV_IOC_BACKING_OPEN, &map);
  return make_int(env, rc < 0 ? -errno : rc);
}

/* backingClose(devFd, id): 0 or -errno. */
static napi_value backing_close(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t dev = -1, id = -1;
  if (argc < 2 || get_i32(env, argv[0], &dev) < 0 || get_i32(env, argv[1], &id) < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "backingClose(devFd, id)");
    return NULL;
  }
  uint32_t backing_id = (uint32_t)id;
  int rc = ioctl(dev, STRATA_FUSE_DEV_IOC_BACKING_CLOSE, &backing_id);
  return make_int(env, rc < 0 ? -errno : rc);
}

/*
 * reply(fd, head, headLength, payload?): one writev of the first headLength bytes of head (the reply header,
 * often with its body, built in a scratch buffer) and the optional payload to /dev/fuse. Returns bytes
 * written or -errno; ENOENT means the request was interrupted meanwhile, and the caller ignores it.
 */
static napi_value reply(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd = -1, head_length = 0;
  void *head = NULL;
  size_t head_capacity = 0;
  if (argc < 3 || get_i32(env, argv[0], &fd) < 0 || napi_get_buffer_info(env, argv[1], &head, &head_capacity) != napi_ok ||
      get_i32(env, argv[2], &head_length) < 0 || head_length < 0 || (size_t)head_length > head_capacity) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "reply(fd, head, headLength <= head.length, payload?)");
    return NULL;
  }
  struct iovec iov[2];
  int n = 1;
  iov[0].iov_base = head;
  iov[0].iov_len = (size_t)head_length;
  if (argc >= 4) {
    napi_valuetype type;
    CHECK(napi_typeof(env, argv[3], &type));
    if (type != napi_undefined && type != napi_null) {
      void *data = NULL;
      size_t length = 0;
      if (napi_get_buffer_info(env, argv[3], &data, &length) != napi_ok) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "payload must be a Buffer");
        return NULL;
      }
      if (length > 0) {
        iov[1].iov_base = data;
        iov[1].iov_len = length;
        n = 2;
      }
    }
  }
  ssize_t rc;
  do {
    rc = writev(fd, iov, n);
  } while (rc < 0 && errno == EINTR);
  return make_int(env, rc < 0 ? -errno : rc);
}

/* ---------------------------------------------------------------------------------------------------------------
 * The reader thread and the batch hand-over
 * ------------------------------------------------------------------------------------------------------------- */

/*
 * Direct I/O: READ and WRITE of a registered file handle are served by the reader thread itself, with one
 * pread/pwrite and one writev, and never reach the JS thread. JS registers a handle when it opens a file in
 * cached mode (passthrough opens never send READ/WRITE) and unregisters it before it closes the fd, and before
 * the data behind it may move (a copy-up while a lower file is open for reading: JS then serves that handle and
 * switches it to the upper copy). io_lock is held across the lookup and the I/O, so an fd is never used after
 * JS took it back. A handle whose slot is taken (the table is indexed by the low bits) simply stays on JS.
 */
#define DIRECT_SLOTS 65536
#define FUSE_OP_READ 15
#define FUSE_OP_WRITE 16
#define IN_HEADER_SIZE 40
#define OUT_HEADER_SIZE 16

struct direct_slot {
  uint64_t fh; /* 0: free */
  int fd;
  int writable;
};

struct request {
  struct request *next;
  size_t length;
  unsigned char data[];
};

struct session {
  int fd;
  size_t buffer_size;
  pthread_t thread;
  uv_async_t async;
  napi_env env;
  napi_ref callback;
  pthread_mutex_t lock;
  struct request *head, *tail; /* guarded by lock */
  size_t queued_bytes;         /* guarded by lock */
  int ended;                   /* guarded by lock: the reader saw the connection end (errno in end_error) */
  int end_error;
  int closed;                  /* JS side: the async handle is closed */
  uint64_t batches, requests;  /* JS thread only: statistics */
  /* Direct I/O (see direct_io): file handles whose READ and WRITE the reader thread serves itself. */
  pthread_mutex_t io_lock;
  struct direct_slot direct[DIRECT_SLOTS]; /* guarded by io_lock */
  uint64_t direct_reads, direct_writes;    /* guarded by io_lock */
  unsigned char *reply_buffer;             /* reader thread only */
};

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static uint32_t get_u32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static void reply_with(struct session *s, const unsigned char *request, int error, const void *payload, size_t length) {
  unsigned char head[OUT_HEADER_SIZE];
  uint32_t total = (uint32_t)(OUT_HEADER_SIZE + (error == 0 ? length : 0));
  int32_t err = -error;
  memcpy(head, &total, 4);
  memcpy(head + 4, &err, 4);
  memcpy(head + 8, request + 8, 8); /* unique, FUSE_UNIQUE_RESEND included */
  struct iovec iov[2] = {{head, OUT_HEADER_SIZE}, {(void *)payload, length}};
  ssize_t rc;
  do {
    rc = writev(s->fd, iov, error == 0 && length > 0 ? 2 : 1);
  } while (rc < 0 && errno == EINTR);
  /* ENOENT: the request was interrupted meanwhile; nothing to do. */
}

/* Serves a READ or WRITE of a registered handle; returns 0 if the request is not one (JS serves it). */
static int direct_io(struct session *s, const unsigned char *request, size_t length) {
  if (length < IN_HEADER_SIZE + 24) return 0;
  uint32_t opcode = get_u32(request + 4);
  if (opcode != FUSE_OP_READ && opcode != FUSE_OP_WRITE) return 0;
  /* Sent again after a server restart (FUSE_UNIQUE_RESEND, bit 63 of unique): the dead server may have done
   * this WRITE already, and on an O_APPEND fd doing it twice appends twice. JS checks first (files.ts write). */
  if ((request[15] & 0x80) != 0) return 0;
  const unsigned char *body = request + IN_HEADER_SIZE;
  uint64_t fh = get_u64(body);
  uint64_t offset = get_u64(body + 8);
  uint32_t size = get_u32(body + 16);
  pthread_mutex_lock(&s->io_lock);
  struct direct_slot *slot = &s->direct[fh % DIRECT_SLOTS];
  if (fh == 0 || slot->fh != fh || (opcode == FUSE_OP_WRITE && !slot->writable)) {
    pthread_mutex_unlock(&s->io_lock);
    return 0;
  }
  if (opcode == FUSE_OP_READ) {
    if (size > s->buffer_size) size = (uint32_t)s->buffer_size;
    ssize_t n = pread(slot->fd, s->reply_buffer, size, (off_t)offset);
    int error = n < 0 ? errno : 0;
    s->direct_reads++;
    pthread_mutex_unlock(&s->io_lock);
    reply_with(s, request, error, s->reply_buffer, n < 0 ? 0 : (size_t)n);
    return 1;
  }
  if (length < IN_HEADER_SIZE + 40 + (size_t)size) {
    pthread_mutex_unlock(&s->io_lock);
    return 0;
  }
  ssize_t n = pwrite(slot->fd, body + 40, size, (off_t)offset);
  int error = n < 0 ? errno : 0;
  s->direct_writes++;
  pthread_mutex_unlock(&s->io_lock);
  uint32_t out[2] = {n < 0 ? 0 : (uint32_t)n, 0};
  reply_with(s, request, error, out, sizeof out);
  return 1;
}

static void *reader_main(void *arg) {
  struct session *s = arg;
  unsigned char *buffer = malloc(s->buffer_size);
  s->reply_buffer = malloc(s->buffer_size);
  int error = buffer == NULL || s->reply_buffer == NULL ? ENOMEM : 0;
  while (error == 0) {
    ssize_t n = read(s->fd, buffer, s->buffer_size);
    if (n < 0) {
      /* ENOENT: the request was interrupted before we read it; EINTR/EAGAIN: retry. */
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      error = errno; /* ENODEV: unmounted (or aborted) */
      break;
    }
    if (n == 0) {
      error = ENODEV;
      break;
    }
    if (direct_io(s, buffer, (size_t)n)) continue;
    struct request *r = malloc(sizeof *r + (size_t)n);
    if (r == NULL) {
      error = ENOMEM;
      break;
    }
    r->next = NULL;
    r->length = (size_t)n;
    memcpy(r->data, buffer, (size_t)n);
    pthread_mutex_lock(&s->lock);
    if (s->tail) s->tail->next = r;
    else s->head = r;
    s->tail = r;
    s->queued_bytes += (size_t)n;
    pthread_mutex_unlock(&s->lock);
    uv_async_send(&s->async);
  }
  free(buffer);
  free(s->reply_buffer);
  s->reply_buffer = NULL;
  pthread_mutex_lock(&s->lock);
  s->ended = 1;
  s->end_error = error;
  pthread_mutex_unlock(&s->lock);
  uv_async_send(&s->async);
  return NULL;
}

static void on_async_closed(uv_handle_t *handle) {
  struct session *s = handle->data;
  /* The session object stays owned by its JS wrapper (finalizer); only mark the handle gone. */
  s->closed = 2;
}

/* On the JS thread: hand every queued request over in one Buffer, then (once) report the end. */
static void on_async(uv_async_t *handle) {
  struct session *s = handle->data;
  pthread_mutex_lock(&s->lock);
  struct request *list = s->head;
  size_t total = s->queued_bytes;
  int ended = s->ended;
  int end_error = s->end_error;
  s->head = s->tail = NULL;
  s->queued_bytes = 0;
  pthread_mutex_unlock(&s->lock);

  napi_env env = s->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value callback, global;
  napi_get_reference_value(env, s->callback, &callback);
  napi_get_global(env, &global);

  if (list != NULL) {
    void *data = NULL;
    napi_value buffer;
    if (napi_create_buffer(env, total, &data, &buffer) == napi_ok) {
      unsigned char *p = data;
      uint64_t count = 0;
      for (struct request *r = list; r != NULL;) {
        struct request *next = r->next;
        memcpy(p, r->data, r->length);
        p += r->length;
        free(r);
        r = next;
        count++;
      }
      s->batches++;
      s->requests += count;
      napi_value args[2] = {buffer, make_int(env, 0)};
      napi_make_callback(env, NULL, global, callback, 2, args, NULL);
    } else {
      for (struct request *r = list; r != NULL;) {
        struct request *next = r->next;
        free(r);
        r = next;
      }
    }
  }
  if (ended && !s->closed) {
    s->closed = 1;
    pthread_join(s->thread, NULL);
    uv_close((uv_handle_t *)&s->async, on_async_closed);
    napi_value null_value;
    napi_get_null(env, &null_value);
    napi_value args[2] = {null_value, make_int(env, -end_error)};
    napi_make_callback(env, NULL, global, callback, 2, args, NULL);
  }
  napi_close_handle_scope(env, scope);
}

static void session_finalize(napi_env env, void *data, void *hint) {
  struct session *s = data;
  /* Only reached once the JS wrapper is unreachable, which the session loop keeps from happening while live. */
  if (s->closed == 2) {
    napi_delete_reference(env, s->callback);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->io_lock);
    free(s);
  }
}

/*
 * startReader(fd, bufferSize, onBatch): starts the reader thread; onBatch(buffer, 0) gets every batch of
 * requests, and onBatch(null, -errno) once when the connection ends (-ENODEV after an unmount). Returns an
 * object whose stats() gives { batches, requests }.
 */
static napi_value stats(napi_env env, napi_callback_info info) {
  void *data = NULL;
  size_t argc = 0;
  CHECK(napi_get_cb_info(env, info, &argc, NULL, NULL, &data));
  struct session *s = data;
  napi_value out;
  CHECK(napi_create_object(env, &out));
  napi_set_named_property(env, out, "batches", make_int(env, (int64_t)s->batches));
  napi_set_named_property(env, out, "requests", make_int(env, (int64_t)s->requests));
  pthread_mutex_lock(&s->io_lock);
  napi_set_named_property(env, out, "directReads", make_int(env, (int64_t)s->direct_reads));
  napi_set_named_property(env, out, "directWrites", make_int(env, (int64_t)s->direct_writes));
  pthread_mutex_unlock(&s->io_lock);
  return out;
}

/* directIo(fh, fd, writable): serve READ (and WRITE if writable) of handle fh on fd in the reader thread.
 * Returns true if registered (false: the slot is taken; JS keeps serving it). */
static napi_value direct_register(napi_env env, napi_callback_info info) {
  void *data = NULL;
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  struct session *s = data;
  int64_t fh = 0;
  int32_t fd = -1;
  bool writable = false;
  if (argc < 3 || napi_get_value_int64(env, argv[0], &fh) != napi_ok || get_i32(env, argv[1], &fd) < 0 ||
      napi_get_value_bool(env, argv[2], &writable) != napi_ok || fh <= 0 || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "directIo(fh > 0, fd, writable)");
    return NULL;
  }
  pthread_mutex_lock(&s->io_lock);
  struct direct_slot *slot = &s->direct[(uint64_t)fh % DIRECT_SLOTS];
  int ok = slot->fh == 0;
  if (ok) {
    slot->fh = (uint64_t)fh;
    slot->fd = fd;
    slot->writable = writable;
  }
  pthread_mutex_unlock(&s->io_lock);
  napi_value out;
  napi_get_boolean(env, ok, &out);
  return out;
}

/* endDirectIo(fh): JS serves handle fh again; when this returns, the reader thread no longer uses its fd. */
static napi_value direct_unregister(napi_env env, napi_callback_info info) {
  void *data = NULL;
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, &data));
  struct session *s = data;
  int64_t fh = 0;
  if (argc < 1 || napi_get_value_int64(env, argv[0], &fh) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "endDirectIo(fh)");
    return NULL;
  }
  pthread_mutex_lock(&s->io_lock);
  struct direct_slot *slot = &s->direct[(uint64_t)fh % DIRECT_SLOTS];
  if (slot->fh == (uint64_t)fh) slot->fh = 0;
  pthread_mutex_unlock(&s->io_lock);
  return NULL;
}

static napi_value start_reader(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd = -1, size = 0;
  napi_valuetype type = napi_undefined;
  if (argc >= 3) napi_typeof(env, argv[2], &type);
  if (argc < 3 || get_i32(env, argv[0], &fd) < 0 || get_i32(env, argv[1], &size) < 0 || size < 8192 ||
      type != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "startReader(fd, bufferSize >= 8192, onBatch)");
    return NULL;
  }
  struct session *s = calloc(1, sizeof *s);
  if (s == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  s->fd = fd;
  s->buffer_size = (size_t)size;
  s->env = env;
  pthread_mutex_init(&s->lock, NULL);
  pthread_mutex_init(&s->io_lock, NULL);
  CHECK(napi_create_reference(env, argv[2], 1, &s->callback));
  uv_loop_t *loop = NULL;
  CHECK(napi_get_uv_event_loop(env, &loop));
  uv_async_init(loop, &s->async, on_async);
  s->async.data = s;
  int rc = pthread_create(&s->thread, NULL, reader_main, s);
  if (rc != 0) {
    s->closed = 1;
    uv_close((uv_handle_t *)&s->async, on_async_closed);
    napi_throw_error(env, "EAGAIN", "cannot start the /dev/fuse reader thread");
    return NULL;
  }
  napi_value out, fn;
  CHECK(napi_create_object(env, &out));
  CHECK(napi_create_function(env, "stats", NAPI_AUTO_LENGTH, stats, s, &fn));
  CHECK(napi_set_named_property(env, out, "stats", fn));
  CHECK(napi_create_function(env, "directIo", NAPI_AUTO_LENGTH, direct_register, s, &fn));
  CHECK(napi_set_named_property(env, out, "directIo", fn));
  CHECK(napi_create_function(env, "endDirectIo", NAPI_AUTO_LENGTH, direct_unregister, s, &fn));
  CHECK(napi_set_named_property(env, out, "endDirectIo", fn));
  CHECK(napi_wrap(env, out, s, session_finalize, NULL, NULL));
  return out;
}

/*
 * mapShared(path, bytes): a Buffer over a MAP_SHARED mapping of `path` (created 0600 and grown to `bytes`).
 * Stores into it reach the file's page cache at once, with no syscall, and survive the process being killed:
 * that is how the node journal (lib/fuse/kernel/journal.ts) outlives a crashed server. Throws on failure
 * (this is set-up, not a per-request path).
 */
static void unmap_finalize(napi_env env, void *data, void *hint) {
  munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value map_shared(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t bytes = 0;
  if (argc < 2 || napi_get_value_int64(env, argv[1], &bytes) != napi_ok || bytes <= 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "mapShared(path, bytes)");
    return NULL;
  }
  char *path = dup_string(env, argv[0]);
  if (path == NULL) return NULL;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  free(path);
  if (fd < 0) {
    napi_throw_error(env, "EIO", strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0 || (st.st_size < bytes && ftruncate(fd, (off_t)bytes) < 0)) {
    int err = errno;
    close(fd);
    napi_throw_error(env, "EIO", strerror(err));
    return NULL;
  }
  void *memory = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (memory == MAP_FAILED) {
    napi_throw_error(env, "EIO", strerror(err));
    return NULL;
  }
  napi_value out;
  CHECK(napi_create_external_buffer(env, (size_t)bytes, memory, unmap_finalize, (void *)(uintptr_t)bytes, &out));
  return out;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor functions[] = {
      {"openDevice", NULL, open_device, NULL, NULL, NULL, napi_default, NULL},
      {"mount", NULL, do_mount, NULL, NULL, NULL, napi_default, NULL},
      {"umount", NULL, do_umount, NULL, NULL, NULL, napi_default, NULL},
      {"backingOpen", NULL, backing_open, NULL, NULL, NULL, napi_default, NULL},
      {"backingClose", NULL, backing_close, NULL, NULL, NULL, napi_default, NULL},
      {"reply", NULL, reply, NULL, NULL, NULL, napi_default, NULL},
      {"startReader", NULL, start_reader, NULL, NULL, NULL, napi_default, NULL},
      {"mapShared", NULL, map_shared, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions);
  return exports;
}
