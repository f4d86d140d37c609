/*
 * strata_sys: the Linux system calls that Node's fs module does not offer, for the Strata union filesystem.
 *
 * The JS-facing contract lives in lib/native/index.ts; this file implements exactly that.
 *
 * Conventions (why they are the way they are):
 *  - Errors are built like Node's own fs errors (message "ENOENT: no such file or directory, lstat '/x'", plus
 *    code/errno/syscall/path properties, errno negative), so that callers treat ours and Node's the same way.
 *  - *Raw functions never throw for an errno: they sit on the FUSE hot path, where building an Error object per
 *    missing file (lookups of names that do not exist are the common case) would cost more than the syscall.
 *  - Bad argument types are programming errors and throw a TypeError (code ERR_INVALID_ARG_TYPE).
 *  - No global mutable state: everything a call needs is on its stack or in its async-work record.
 */
#include "strata_napi.h"

#include <uv.h>

#include <dirent.h>
#include <sched.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Older kernel headers lack these; the values are ABI and cannot change. */
#ifndef FICLONE
#define FICLONE _IOW(0x94, 9, int)
#endif
#ifndef FS_IOC_GETFSUUID
struct fsuuid2 {
  uint8_t len;
  uint8_t uuid[16];
};
#define FS_IOC_GETFSUUID _IOR(0x15, 0, struct fsuuid2)
#endif
#ifndef MAX_HANDLE_SZ
#define MAX_HANDLE_SZ 128
#endif

/* Keep in step with StatIndex in lib/native/index.ts. */
enum stat_index {
  SI_MODE = 0, SI_UID, SI_GID, SI_SIZE, SI_DEV, SI_NLINK, SI_INO, SI_RDEV, SI_BLKSIZE, SI_BLOCKS,
  SI_ATIME_SEC, SI_ATIME_NSEC, SI_MTIME_SEC, SI_MTIME_NSEC, SI_CTIME_SEC, SI_CTIME_NSEC,
  SI_LENGTH
};

/* ---------------------------------------------------------------------------------------------------------------
 * Node-style errors
 * ------------------------------------------------------------------------------------------------------------- */

/* Node spells messages the libuv way ("no such file or directory"); fall back to libc for errnos libuv lacks. */
static const char *errno_message(int err) {
  const char *text = uv_strerror(-err);
  if (text == NULL || strncmp(text, "Unknown system error", 20) == 0) text = strerror(err);
  return text;
}

static const char *errno_code(int err) {
  const char *name = strerrorname_np(err);
  return name != NULL ? name : "UNKNOWN";
}

static napi_status set_string_property(napi_env env, napi_value obj, const char *key, const char *value) {
  napi_value v;
  napi_status status = napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v);
  if (status != napi_ok) return status;
  return napi_set_named_property(env, obj, key, v);
}

/* Builds (does not throw) an Error like Node's uvException: path and dest may be NULL. */
static napi_value make_errno_error(napi_env env, int err, const char *syscall_name, const char *path, const char *dest) {
  const char *code = errno_code(err);
  const char *text = errno_message(err);
  size_t cap = strlen(code) + strlen(text) + strlen(syscall_name) + (path ? strlen(path) : 0) +
               (dest ? strlen(dest) : 0) + 32;
  char *message = malloc(cap);
  if (message == NULL) return NULL;
  if (path != NULL && dest != NULL) {
    snprintf(message, cap, "%s: %s, %s '%s' -> '%s'", code, text, syscall_name, path, dest);
  } else if (path != NULL) {
    snprintf(message, cap, "%s: %s, %s '%s'", code, text, syscall_name, path);
  } else {
    snprintf(message, cap, "%s: %s, %s", code, text, syscall_name);
  }

  napi_value msg_value, code_value, error, errno_value;
  napi_value result = NULL;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_value) == napi_ok &&
      napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_value) == napi_ok &&
      napi_create_error(env, code_value, msg_value, &error) == napi_ok &&
      napi_create_int32(env, -err, &errno_value) == napi_ok &&
      napi_set_named_property(env, error, "errno", errno_value) == napi_ok &&
      set_string_property(env, error, "syscall", syscall_name) == napi_ok &&
      (path == NULL || set_string_property(env, error, "path", path) == napi_ok) &&
      (dest == NULL || set_string_property(env, error, "dest", dest) == napi_ok)) {
    result = error;
  }
  free(message);
  return result;
}

static void throw_errno(napi_env env, int err, const char *syscall_name, const char *path, const char *dest) {
  napi_value error = make_errno_error(env, err, syscall_name, path, dest);
  if (error != NULL) {
    napi_throw(env, error);
  } else {
    throw_last_napi_error(env);
  }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Argument helpers
 * ------------------------------------------------------------------------------------------------------------- */

/*
 * Copies a JS string into `stack` when it fits (the common case, no allocation), else into a malloc'd buffer.
 * Returns the C string, or NULL with a TypeError pending. Release with release_string().
 */
static char *get_string(napi_env env, napi_value value, char *stack, size_t stack_size, const char *what) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) {
    char message[128];
    snprintf(message, sizeof message, "%s must be a string", what);
    throw_type_error(env, message);
    return NULL;
  }
  char *buffer = length < stack_size ? stack : malloc(length + 1);
  if (buffer == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, value, buffer, length + 1, &length);
  return buffer;
}

static void release_string(char *s, char *stack) {
  if (s != stack) free(s);
}

static bool get_int64(napi_env env, napi_value value, int64_t *out, const char *what) {
  if (napi_get_value_int64(env, value, out) != napi_ok) {
    char message[128];
    snprintf(message, sizeof message, "%s must be a number", what);
    throw_type_error(env, message);
    return false;
  }
  return true;
}

static bool get_int32(napi_env env, napi_value value, int32_t *out, const char *what) {
  if (napi_get_value_int32(env, value, out) != napi_ok) {
    char message[128];
    snprintf(message, sizeof message, "%s must be a number", what);
    throw_type_error(env, message);
    return false;
  }
  return true;
}

static bool get_buffer(napi_env env, napi_value value, void **data, size_t *length, const char *what) {
  bool is_buffer = false;
  if (napi_is_buffer(env, value, &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, value, data, length) != napi_ok) {
    char message[128];
    snprintf(message, sizeof message, "%s must be a Buffer", what);
    throw_type_error(env, message);
    return false;
  }
  return true;
}

/* A path argument: declares `name` (char *) backed by a stack buffer; returns NULL from the function on failure. */
#define PATH_ARG(name, index, what)                                                  \
  char name##_stack[PATH_MAX];                                                       \
  char *name = get_string(env, argv[index], name##_stack, sizeof name##_stack, what); \
  if (name == NULL) return NULL;

static napi_value make_null(napi_env env) {
  napi_value null_value;
  napi_get_null(env, &null_value);
  return null_value;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Paths of any length
 *
 * A real path is a layer root plus a merged path, and a merged path has no length limit (a process cd'd deep
 * inside the mount keeps creating entries, each call under PATH_MAX relative to its cwd). The kernel refuses a
 * path of PATH_MAX bytes or more in one call, so such a path is walked in hops: openat(O_PATH|O_DIRECTORY) of
 * the longest prefix that fits, then of the next one relative to that fd, until the rest fits; the *at call then
 * runs relative to the last fd. Shorter paths (nearly all) take no hop: dirfd stays AT_FDCWD and rel is the path,
 * so the only cost on the fast path is a strlen. The hops follow symlinks in intermediate components exactly as
 * a one-call path walk would; only the final component keeps each call's own follow rule.
 * ------------------------------------------------------------------------------------------------------------- */

typedef struct {
  int dirfd;       /* AT_FDCWD or an O_PATH fd owned by this struct */
  const char *rel; /* points into the caller's path string */
} at_path;

/* Fills `out` for `path`; returns 0 or -errno (ENAMETOOLONG for a single component that alone is too long). */
static int at_resolve(const char *path, at_path *out) {
  out->dirfd = AT_FDCWD;
  out->rel = path;
  if (strlen(path) < PATH_MAX) return 0;
  char prefix[PATH_MAX];
  const char *rest = path;
  int fd = AT_FDCWD;
  while (strlen(rest) >= PATH_MAX) {
    /* The last '/' that leaves a prefix of at most PATH_MAX - 1 bytes; the root "/" itself is a valid prefix. */
    const char *cut = NULL;
    for (const char *q = rest + PATH_MAX - 1; q >= rest; q--) {
      if (*q == '/') {
        cut = q;
        break;
      }
    }
    if (cut == NULL) {
      if (fd != AT_FDCWD) close(fd);
      return -ENAMETOOLONG;
    }
    size_t n = cut == rest ? 1 : (size_t) (cut - rest); /* a leading '/' hops to the root */
    memcpy(prefix, rest, n);
    prefix[n] = 0;
    int next = openat(fd, prefix, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int err = errno;
    if (fd != AT_FDCWD) close(fd);
    if (next < 0) return -err;
    fd = next;
    rest = cut + 1;
    while (*rest == '/') rest++;
  }
  out->dirfd = fd;
  out->rel = *rest == 0 ? "." : rest;
  return 0;
}

static void at_release(at_path *p) {
  if (p->dirfd != AT_FDCWD) close(p->dirfd);
  p->dirfd = AT_FDCWD;
}

/*
 * For the path calls that have no *at form (the xattr calls, truncate): a long path is opened O_PATH (without
 * following a final symlink when `follow_last` is false) and named as /proc/self/fd/N, which the kernel resolves
 * to exactly that object and, being a magic link, never follows further. `proc` receives that name. Short paths
 * are returned unchanged with *fd = -1. Returns the path to use, or NULL with errno set.
 */
static const char *proc_path_for(const char *path, bool follow_last, char proc[32], int *fd) {
  *fd = -1;
  if (strlen(path) < PATH_MAX) return path;
  at_path ap;
  int rc = at_resolve(path, &ap);
  if (rc < 0) {
    errno = -rc;
    return NULL;
  }
  int opened = openat(ap.dirfd, ap.rel, O_PATH | O_CLOEXEC | (follow_last ? 0 : O_NOFOLLOW));
  int err = errno;
  at_release(&ap);
  if (opened < 0) {
    errno = err;
    return NULL;
  }
  *fd = opened;
  snprintf(proc, 32, "/proc/self/fd/%d", opened);
  return proc;
}

#define AT_ARG(ap, name)                              \
  at_path ap;                                         \
  do {                                                \
    int at_rc_ = at_resolve(name, &ap);               \
    if (at_rc_ < 0) {                                 \
      throw_errno(env, -at_rc_, "openat", name, NULL); \
      release_string(name, name##_stack);             \
      return NULL;                                    \
    }                                                 \
  } while (0)

/* ---------------------------------------------------------------------------------------------------------------
 * lstatRaw / fstatRaw
 * ------------------------------------------------------------------------------------------------------------- */

static void fill_stat(double *out, const struct stat *st) {
  out[SI_MODE] = st->st_mode;
  out[SI_UID] = st->st_uid;
  out[SI_GID] = st->st_gid;
  out[SI_SIZE] = (double) st->st_size;
  out[SI_DEV] = (double) st->st_dev;
  out[SI_NLINK] = (double) st->st_nlink;
  /* Inode numbers above 2^53 would lose precision; none of the filesystems Strata layers on produce them. */
  out[SI_INO] = (double) st->st_ino;
  out[SI_RDEV] = (double) st->st_rdev;
  out[SI_BLKSIZE] = st->st_blksize;
  out[SI_BLOCKS] = (double) st->st_blocks;
  out[SI_ATIME_SEC] = (double) st->st_atim.tv_sec;
  out[SI_ATIME_NSEC] = st->st_atim.tv_nsec;
  out[SI_MTIME_SEC] = (double) st->st_mtim.tv_sec;
  out[SI_MTIME_NSEC] = st->st_mtim.tv_nsec;
  out[SI_CTIME_SEC] = (double) st->st_ctim.tv_sec;
  out[SI_CTIME_NSEC] = st->st_ctim.tv_nsec;
}

/* The output array must be a Float64Array with room for every StatIndex slot. */
static double *get_stat_out(napi_env env, napi_value value) {
  bool is_typedarray = false;
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  if (napi_is_typedarray(env, value, &is_typedarray) != napi_ok || !is_typedarray ||
      napi_get_typedarray_info(env, value, &type, &length, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || length < SI_LENGTH) {
    throw_type_error(env, "out must be a Float64Array of at least StatIndex.length elements");
    return NULL;
  }
  return data;
}

static napi_value lstat_raw(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  double *out = get_stat_out(env, argv[1]);
  if (out == NULL) return NULL;
  PATH_ARG(file, 0, "file");
  struct stat st;
  at_path ap;
  int rc = at_resolve(file, &ap);
  int err = -rc;
  if (rc == 0) {
    rc = fstatat(ap.dirfd, ap.rel, &st, AT_SYMLINK_NOFOLLOW);
    err = errno;
    at_release(&ap);
  }
  release_string(file, file_stack);
  if (rc == 0) fill_stat(out, &st);
  napi_value result;
  CHECK(napi_create_int32(env, rc == 0 ? 0 : -err, &result));
  return result;
}

static napi_value fstat_raw(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  if (!get_int32(env, argv[0], &fd, "fd")) return NULL;
  double *out = get_stat_out(env, argv[1]);
  if (out == NULL) return NULL;
  struct stat st;
  int rc = fstat(fd, &st);
  if (rc == 0) fill_stat(out, &st);
  napi_value result;
  CHECK(napi_create_int32(env, rc == 0 ? 0 : -errno, &result));
  return result;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Extended attributes
 *
 * A file is named either by path (l* calls, which never follow a final symlink: overlay metadata such as
 * trusted.overlay.opaque lives on the entry itself) or by fd. One target struct lets the get/list loops be shared.
 * ------------------------------------------------------------------------------------------------------------- */

typedef struct {
  const char *path; /* NULL when fd names the file */
  int fd;
  /* path is a /proc/self/fd/N name (a long path opened O_PATH|O_NOFOLLOW): the l* calls would act on the magic
     link itself, so the following calls are used, which stop at the object the fd holds (a symlink included). */
  bool via_proc;
} xattr_target;

static ssize_t target_getxattr(const xattr_target *t, const char *name, void *value, size_t size) {
  if (t->path == NULL) return fgetxattr(t->fd, name, value, size);
  return t->via_proc ? getxattr(t->path, name, value, size) : lgetxattr(t->path, name, value, size);
}

static ssize_t target_listxattr(const xattr_target *t, char *list, size_t size) {
  if (t->path == NULL) return flistxattr(t->fd, list, size);
  return t->via_proc ? listxattr(t->path, list, size) : llistxattr(t->path, list, size);
}

/*
 * Reads a value of any size: probe the size, then read; another writer may grow the value in between (ERANGE),
 * in which case probe again. Returns a Buffer, null for ENODATA, or NULL with an exception pending.
 */
static napi_value read_xattr(napi_env env, const xattr_target *t, const char *name) {
  const char *syscall_name = t->path ? "lgetxattr" : "fgetxattr";
  for (;;) {
    ssize_t size = target_getxattr(t, name, NULL, 0);
    if (size < 0) {
      if (errno == ENODATA) return make_null(env);
      throw_errno(env, errno, syscall_name, t->path, NULL);
      return NULL;
    }
    /* One spare byte so that a value that grew is seen as ERANGE, not silently truncated at exactly `size`. */
    char *value = malloc((size_t) size + 1);
    if (value == NULL) {
      throw_errno(env, ENOMEM, syscall_name, t->path, NULL);
      return NULL;
    }
    ssize_t got = target_getxattr(t, name, value, (size_t) size + 1);
    if (got < 0) {
      int err = errno;
      free(value);
      if (err == ERANGE) continue;
      if (err == ENODATA) return make_null(env);
      throw_errno(env, err, syscall_name, t->path, NULL);
      return NULL;
    }
    napi_value result;
    napi_status status = napi_create_buffer_copy(env, (size_t) got, value, NULL, &result);
    free(value);
    CHECK(status);
    return result;
  }
}

static napi_value list_xattrs(napi_env env, const xattr_target *t) {
  const char *syscall_name = t->path ? "llistxattr" : "flistxattr";
  for (;;) {
    ssize_t size = target_listxattr(t, NULL, 0);
    if (size < 0) {
      throw_errno(env, errno, syscall_name, t->path, NULL);
      return NULL;
    }
    char *list = malloc((size_t) size + 1);
    if (list == NULL) {
      throw_errno(env, ENOMEM, syscall_name, t->path, NULL);
      return NULL;
    }
    ssize_t got = target_listxattr(t, list, (size_t) size + 1);
    if (got < 0) {
      int err = errno;
      free(list);
      if (err == ERANGE) continue;
      throw_errno(env, err, syscall_name, t->path, NULL);
      return NULL;
    }
    napi_value names;
    if (napi_create_array(env, &names) != napi_ok) {
      free(list);
      throw_last_napi_error(env);
      return NULL;
    }
    uint32_t index = 0;
    for (ssize_t pos = 0; pos < got;) {
      size_t len = strnlen(list + pos, (size_t) (got - pos));
      napi_value name;
      if (napi_create_string_utf8(env, list + pos, len, &name) != napi_ok ||
          napi_set_element(env, names, index++, name) != napi_ok) {
        free(list);
        throw_last_napi_error(env);
        return NULL;
      }
      pos += (ssize_t) len + 1;
    }
    free(list);
    return names;
  }
}

static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  PATH_ARG(file, 0, "file");
  char name_stack[XATTR_NAME_MAX + 1];
  char *name = get_string(env, argv[1], name_stack, sizeof name_stack, "name");
  napi_value result = NULL;
  if (name != NULL) {
    char proc[32];
    int pfd;
    const char *target = proc_path_for(file, false, proc, &pfd);
    if (target == NULL) {
      throw_errno(env, errno, "lgetxattr", file, NULL);
    } else {
      xattr_target t = {target, -1, pfd >= 0};
      result = read_xattr(env, &t, name);
      if (pfd >= 0) close(pfd);
    }
    release_string(name, name_stack);
  }
  release_string(file, file_stack);
  return result;
}

static napi_value js_fgetxattr(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t fd;
  if (!get_int32(env, argv[0], &fd, "fd")) return NULL;
  char name_stack[XATTR_NAME_MAX + 1];
  char *name = get_string(env, argv[1], name_stack, sizeof name_stack, "name");
  if (name == NULL) return NULL;
  xattr_target t = {NULL, fd, false};
  napi_value result = read_xattr(env, &t, name);
  release_string(name, name_stack);
  return result;
}

static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  void *value;
  size_t size;
  int32_t flags;
  if (!get_buffer(env, argv[2], &value, &size, "value") || !get_int32(env, argv[3], &flags, "flags")) return NULL;
  PATH_ARG(file, 0, "file");
  char name_stack[XATTR_NAME_MAX + 1];
  char *name = get_string(env, argv[1], name_stack, sizeof name_stack, "name");
  if (name != NULL) {
    char proc[32];
    int pfd;
    const char *target = proc_path_for(file, false, proc, &pfd);
    int rc = target == NULL ? -1 : pfd >= 0 ? setxattr(target, name, value, size, flags) : lsetxattr(target, name, value, size, flags);
    if (rc != 0) throw_errno(env, errno, "lsetxattr", file, NULL);
    if (pfd >= 0) close(pfd);
    release_string(name, name_stack);
  }
  release_string(file, file_stack);
  return NULL;
}

static napi_value js_fsetxattr(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd, flags;
  void *value;
  size_t size;
  if (!get_int32(env, argv[0], &fd, "fd") || !get_buffer(env, argv[2], &value, &size, "value") ||
      !get_int32(env, argv[3], &flags, "flags")) {
    return NULL;
  }
  char name_stack[XATTR_NAME_MAX + 1];
  char *name = get_string(env, argv[1], name_stack, sizeof name_stack, "name");
  if (name == NULL) return NULL;
  if (fsetxattr(fd, name, value, size, flags) != 0) throw_errno(env, errno, "fsetxattr", NULL, NULL);
  release_string(name, name_stack);
  return NULL;
}

static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  PATH_ARG(file, 0, "file");
  char proc[32];
  int pfd;
  const char *target = proc_path_for(file, false, proc, &pfd);
  napi_value result = NULL;
  if (target == NULL) {
    throw_errno(env, errno, "llistxattr", file, NULL);
  } else {
    xattr_target t = {target, -1, pfd >= 0};
    result = list_xattrs(env, &t);
    if (pfd >= 0) close(pfd);
  }
  release_string(file, file_stack);
  return result;
}

static napi_value js_flistxattr(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int32_t fd;
  if (!get_int32(env, argv[0], &fd, "fd")) return NULL;
  xattr_target t = {NULL, fd, false};
  return list_xattrs(env, &t);
}

static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  PATH_ARG(file, 0, "file");
  char name_stack[XATTR_NAME_MAX + 1];
  char *name = get_string(env, argv[1], name_stack, sizeof name_stack, "name");
  if (name != NULL) {
    char proc[32];
    int pfd;
    const char *target = proc_path_for(file, false, proc, &pfd);
    int rc = target == NULL ? -1 : pfd >= 0 ? removexattr(target, name) : lremovexattr(target, name);
    if (rc != 0) throw_errno(env, errno, "lremovexattr", file, NULL);
    if (pfd >= 0) close(pfd);
    release_string(name, name_stack);
  }
  release_string(file, file_stack);
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------
 * mknod, renameat2, utimensat, futimens
 * ------------------------------------------------------------------------------------------------------------- */

static napi_value js_mknod(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int64_t mode, dev;
  if (!get_int64(env, argv[1], &mode, "mode") || !get_int64(env, argv[2], &dev, "dev")) return NULL;
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  if (mknodat(ap.dirfd, ap.rel, (mode_t) mode, (dev_t) dev) != 0) throw_errno(env, errno, "mknod", file, NULL);
  at_release(&ap);
  release_string(file, file_stack);
  return NULL;
}

static napi_value js_renameat2(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t flags;
  if (!get_int32(env, argv[2], &flags, "flags")) return NULL;
  PATH_ARG(from, 0, "from");
  char to_stack[PATH_MAX];
  char *to = get_string(env, argv[1], to_stack, sizeof to_stack, "to");
  if (to != NULL) {
    at_path a, b;
    int rc = at_resolve(from, &a);
    if (rc == 0) {
      rc = at_resolve(to, &b);
      if (rc == 0) {
        /* glibc's renameat2() wrapper is recent; the raw syscall works with any libc. */
        rc = syscall(SYS_renameat2, a.dirfd, a.rel, b.dirfd, b.rel, (unsigned int) flags) == 0 ? 0 : -errno;
        at_release(&b);
      }
      at_release(&a);
    }
    if (rc != 0) throw_errno(env, -rc, "rename", from, to);
    release_string(to, to_stack);
  }
  release_string(from, from_stack);
  return NULL;
}

/* Seconds may be negative (before 1970); nanoseconds may be UTIME_NOW or UTIME_OMIT, which pass through. */
static bool get_times(napi_env env, napi_value *argv, struct timespec times[2]) {
  int64_t values[4];
  static const char *const names[4] = {"atimeSec", "atimeNsec", "mtimeSec", "mtimeNsec"};
  for (int i = 0; i < 4; i++) {
    if (!get_int64(env, argv[i], &values[i], names[i])) return false;
  }
  times[0].tv_sec = (time_t) values[0];
  times[0].tv_nsec = (long) values[1];
  times[1].tv_sec = (time_t) values[2];
  times[1].tv_nsec = (long) values[3];
  return true;
}

static napi_value js_utimensat(napi_env env, napi_callback_info info) {
  GET_ARGS(6);
  struct timespec times[2];
  if (!get_times(env, argv + 1, times)) return NULL;
  bool no_follow = false;
  if (napi_get_value_bool(env, argv[5], &no_follow) != napi_ok) {
    throw_type_error(env, "noFollow must be a boolean");
    return NULL;
  }
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  if (utimensat(ap.dirfd, ap.rel, times, no_follow ? AT_SYMLINK_NOFOLLOW : 0) != 0) {
    throw_errno(env, errno, "utimensat", file, NULL);
  }
  at_release(&ap);
  release_string(file, file_stack);
  return NULL;
}

static napi_value js_futimens(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int32_t fd;
  struct timespec times[2];
  if (!get_int32(env, argv[0], &fd, "fd") || !get_times(env, argv + 1, times)) return NULL;
  if (futimens(fd, times) != 0) throw_errno(env, errno, "futimens", NULL, NULL);
  return NULL;
}

/* fallocate(fd, mode, offset, length): every mode the filesystem supports (EOPNOTSUPP where it does not). */
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t fd;
  int64_t mode, offset, length;
  if (!get_int32(env, argv[0], &fd, "fd") || !get_int64(env, argv[1], &mode, "mode") ||
      !get_int64(env, argv[2], &offset, "offset") || !get_int64(env, argv[3], &length, "length")) {
    return NULL;
  }
  if (fallocate(fd, (int)mode, (off_t)offset, (off_t)length) != 0) throw_errno(env, errno, "fallocate", NULL, NULL);
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------
 * copyData: sparse-preserving data copy on the threadpool
 * ------------------------------------------------------------------------------------------------------------- */

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int src_fd;
  int dst_fd;
  int64_t length;
  /* Results, written on the threadpool, read in complete. */
  int64_t copied;
  int err;
  const char *failed_syscall;
} copy_job;

/* Plain read/write for one extent, used where copy_file_range cannot work (across some filesystems, old kernels). */
static int copy_extent_rw(copy_job *job, int64_t offset, int64_t end) {
  char buffer[128 * 1024];
  while (offset < end) {
    size_t want = (size_t) (end - offset < (int64_t) sizeof buffer ? end - offset : (int64_t) sizeof buffer);
    ssize_t got = pread(job->src_fd, buffer, want, offset);
    if (got < 0) {
      if (errno == EINTR) continue;
      job->failed_syscall = "read";
      return errno;
    }
    if (got == 0) return 0; /* the source shrank under us: copy what exists */
    for (ssize_t done = 0; done < got;) {
      ssize_t put = pwrite(job->dst_fd, buffer + done, (size_t) (got - done), offset + done);
      if (put < 0) {
        if (errno == EINTR) continue;
        job->failed_syscall = "write";
        return errno;
      }
      done += put;
    }
    offset += got;
    job->copied += got;
  }
  return 0;
}

static int copy_extent(copy_job *job, int64_t offset, int64_t end, bool *use_rw) {
  while (!*use_rw && offset < end) {
    loff_t in_off = offset, out_off = offset;
    ssize_t n = copy_file_range(job->src_fd, &in_off, job->dst_fd, &out_off, (size_t) (end - offset), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
        *use_rw = true; /* the same reason will hold for every later extent */
        break;
      }
      job->failed_syscall = "copy_file_range";
      return errno;
    }
    if (n == 0) return 0; /* the source shrank under us */
    offset += n;
    job->copied += n;
  }
  return offset < end ? copy_extent_rw(job, offset, end) : 0;
}

static void copy_execute(napi_env env, void *data) {
  copy_job *job = data;
  job->copied = 0;
  job->err = 0;

  /* A reflink shares the extents, holes included, in one step where the filesystem supports it. */
  if (ioctl(job->dst_fd, FICLONE, job->src_fd) == 0) {
    job->copied = job->length;
  } else {
    bool use_rw = false;
    int64_t offset = 0;
    while (offset < job->length) {
      off_t data_start = lseek(job->src_fd, offset, SEEK_DATA);
      if (data_start < 0) {
        if (errno == ENXIO) break; /* only a hole remains */
        if (errno != EINVAL && errno != EOPNOTSUPP) {
          job->err = errno;
          job->failed_syscall = "lseek";
          return;
        }
        data_start = offset; /* no SEEK_DATA support: treat the rest as data */
      }
      if (data_start >= job->length) break;
      off_t hole_start = lseek(job->src_fd, data_start, SEEK_HOLE);
      if (hole_start < 0 || hole_start > job->length) hole_start = job->length;
      int err = copy_extent(job, data_start, hole_start, &use_rw);
      if (err != 0) {
        job->err = err;
        return;
      }
      offset = hole_start;
    }
  }

  /* Sets the size exactly, which recreates a trailing hole that no extent copy wrote. */
  if (ftruncate(job->dst_fd, job->length) != 0) {
    job->err = errno;
    job->failed_syscall = "ftruncate";
  }
}

static void copy_complete(napi_env env, napi_status status, void *data) {
  copy_job *job = data;
  if (status != napi_ok) {
    napi_value message, error;
    napi_create_string_utf8(env, "copyData was cancelled", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, job->deferred, error);
  } else if (job->err != 0) {
    napi_value error = make_errno_error(env, job->err, job->failed_syscall, NULL, NULL);
    napi_reject_deferred(env, job->deferred, error);
  } else {
    napi_value copied;
    napi_create_double(env, (double) job->copied, &copied);
    napi_resolve_deferred(env, job->deferred, copied);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value js_copy_data(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t src_fd, dst_fd;
  int64_t length;
  if (!get_int32(env, argv[0], &src_fd, "srcFd") || !get_int32(env, argv[1], &dst_fd, "dstFd") ||
      !get_int64(env, argv[2], &length, "length")) {
    return NULL;
  }
  if (length < 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "length must not be negative");
    return NULL;
  }
  copy_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    throw_errno(env, ENOMEM, "copyData", NULL, NULL);
    return NULL;
  }
  job->src_fd = src_fd;
  job->dst_fd = dst_fd;
  job->length = length;

  napi_value promise, resource_name;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "strata_sys.copyData", NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, copy_execute, copy_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    free(job); /* leaks the deferred on this N-API failure path; nothing better can be done */
    throw_last_napi_error(env);
    return NULL;
  }
  return promise;
}

/* ---------------------------------------------------------------------------------------------------------------
 * File handles and filesystem identity
 * ------------------------------------------------------------------------------------------------------------- */

static napi_value js_name_to_handle(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  PATH_ARG(file, 0, "file");
  union {
    struct file_handle fh;
    char space[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  } handle;
  handle.fh.handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  AT_ARG(ap, file);
  /* flags 0: do not follow a final symlink, so a layer's symlink gets its own handle. */
  int rc = name_to_handle_at(ap.dirfd, ap.rel, &handle.fh, &mount_id, 0);
  if (rc != 0) rc = -errno;
  at_release(&ap);
  if (rc != 0) {
    errno = -rc;
    throw_errno(env, errno, "name_to_handle_at", file, NULL);
    release_string(file, file_stack);
    return NULL;
  }
  release_string(file, file_stack);

  napi_value result, type, bytes;
  CHECK(napi_create_object(env, &result));
  CHECK(napi_create_int32(env, handle.fh.handle_type, &type));
  CHECK(napi_create_buffer_copy(env, handle.fh.handle_bytes, handle.fh.f_handle, NULL, &bytes));
  CHECK(napi_set_named_property(env, result, "type", type));
  CHECK(napi_set_named_property(env, result, "handle", bytes));
  return result;
}

static napi_value js_open_by_handle(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int32_t mount_fd, type, flags;
  void *bytes;
  size_t length;
  if (!get_int32(env, argv[0], &mount_fd, "mountFd") || !get_int32(env, argv[1], &type, "type") ||
      !get_buffer(env, argv[2], &bytes, &length, "handle") || !get_int32(env, argv[3], &flags, "flags")) {
    return NULL;
  }
  if (length > MAX_HANDLE_SZ) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "handle is longer than MAX_HANDLE_SZ");
    return NULL;
  }
  union {
    struct file_handle fh;
    char space[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  } handle;
  handle.fh.handle_bytes = (unsigned int) length;
  handle.fh.handle_type = type;
  memcpy(handle.fh.f_handle, bytes, length);
  int fd = open_by_handle_at(mount_fd, &handle.fh, flags | O_CLOEXEC);
  if (fd < 0) {
    throw_errno(env, errno, "open_by_handle_at", NULL, NULL);
    return NULL;
  }
  napi_value result;
  CHECK(napi_create_int32(env, fd, &result));
  return result;
}

static napi_value js_get_fs_uuid(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  PATH_ARG(file, 0, "file");
  /* O_NONBLOCK so that a fifo cannot hang the open; the ioctl needs a real (non-O_PATH) descriptor. */
  AT_ARG(ap, file);
  int fd = openat(ap.dirfd, ap.rel, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) fd = -errno;
  at_release(&ap);
  if (fd < 0) {
    throw_errno(env, -fd, "open", file, NULL);
    release_string(file, file_stack);
    return NULL;
  }
  struct fsuuid2 uuid;
  memset(&uuid, 0, sizeof uuid);
  int rc = ioctl(fd, FS_IOC_GETFSUUID, &uuid);
  int err = errno;
  close(fd);
  napi_value result = NULL;
  if (rc != 0) {
    /* Filesystems without a UUID (tmpfs, fuse, ...) answer one of these: "no UUID", not a failure. */
    if (err == ENOTTY || err == EOPNOTSUPP || err == EINVAL) {
      result = make_null(env);
    } else {
      throw_errno(env, err, "ioctl", file, NULL);
    }
  } else if (uuid.len == 0 || uuid.len > sizeof uuid.uuid) {
    result = make_null(env);
  } else if (napi_create_buffer_copy(env, uuid.len, uuid.uuid, NULL, &result) != napi_ok) {
    throw_last_napi_error(env);
    result = NULL;
  }
  release_string(file, file_stack);
  return result;
}

/* ---------------------------------------------------------------------------------------------------------------
 * readdirIno: names, d_type and d_ino of a directory in one crossing, for merged readdir
 * ------------------------------------------------------------------------------------------------------------- */

static napi_value js_readdir_ino(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  PATH_ARG(dir, 0, "dir");
  AT_ARG(ap, dir);
  int dfd = openat(ap.dirfd, ap.rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int open_err = errno;
  at_release(&ap);
  DIR *stream = dfd < 0 ? NULL : fdopendir(dfd);
  if (stream == NULL) {
    if (dfd >= 0) {
      open_err = errno;
      close(dfd);
    }
    throw_errno(env, open_err, "opendir", dir, NULL);
    release_string(dir, dir_stack);
    return NULL;
  }

  /* Entries are gathered in C first because the typed arrays must be sized before they are created. */
  size_t count = 0, capacity = 64;
  uint8_t *types = malloc(capacity);
  double *inos = malloc(capacity * sizeof(double));
  napi_value names = NULL;
  bool ok = types != NULL && inos != NULL && napi_create_array(env, &names) == napi_ok;
  int read_err = 0;
  while (ok) {
    errno = 0;
    struct dirent *entry = readdir(stream);
    if (entry == NULL) {
      read_err = errno;
      break;
    }
    const char *n = entry->d_name;
    if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
    if (count == capacity) {
      capacity *= 2;
      uint8_t *more_types = realloc(types, capacity);
      if (more_types != NULL) types = more_types;
      double *more_inos = realloc(inos, capacity * sizeof(double));
      if (more_inos != NULL) inos = more_inos;
      if (more_types == NULL || more_inos == NULL) {
        read_err = ENOMEM;
        break;
      }
    }
    napi_value name;
    if (napi_create_string_utf8(env, n, NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_set_element(env, names, (uint32_t) count, name) != napi_ok) {
      ok = false;
      break;
    }
    types[count] = entry->d_type;
    inos[count] = (double) entry->d_ino;
    count++;
  }
  closedir(stream);

  napi_value result = NULL;
  if (!ok) {
    if (types == NULL || inos == NULL) {
      throw_errno(env, ENOMEM, "readdir", dir, NULL);
    } else {
      throw_last_napi_error(env);
    }
  } else if (read_err != 0) {
    throw_errno(env, read_err, "readdir", dir, NULL);
  } else {
    napi_value types_buffer, inos_buffer, types_array, inos_array;
    void *types_data, *inos_data;
    if (napi_create_arraybuffer(env, count, &types_data, &types_buffer) == napi_ok &&
        napi_create_arraybuffer(env, count * sizeof(double), &inos_data, &inos_buffer) == napi_ok &&
        napi_create_typedarray(env, napi_uint8_array, count, types_buffer, 0, &types_array) == napi_ok &&
        napi_create_typedarray(env, napi_float64_array, count, inos_buffer, 0, &inos_array) == napi_ok &&
        napi_create_object(env, &result) == napi_ok) {
      if (count > 0) {
        memcpy(types_data, types, count);
        memcpy(inos_data, inos, count * sizeof(double));
      }
      if (napi_set_named_property(env, result, "names", names) != napi_ok ||
          napi_set_named_property(env, result, "types", types_array) != napi_ok ||
          napi_set_named_property(env, result, "inos", inos_array) != napi_ok) {
        result = NULL;
      }
    }
    if (result == NULL) throw_last_napi_error(env);
  }
  free(types);
  free(inos);
  release_string(dir, dir_stack);
  return result;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Namespace and attribute calls for paths of any length (see "Paths of any length"). Node's fs has the same
 * calls on plain paths; the union uses those for short paths and these once a path reaches PATH_MAX.
 * ------------------------------------------------------------------------------------------------------------- */

static napi_value js_mkdir(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t mode;
  if (!get_int32(env, argv[1], &mode, "mode")) return NULL;
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  if (mkdirat(ap.dirfd, ap.rel, (mode_t) mode) != 0) throw_errno(env, errno, "mkdir", file, NULL);
  at_release(&ap);
  release_string(file, file_stack);
  return NULL;
}

/* unlink(2) or, with AT_REMOVEDIR, rmdir(2). */
static napi_value unlink_common(napi_env env, napi_callback_info info, int flags, const char *syscall_name) {
  GET_ARGS(1);
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  if (unlinkat(ap.dirfd, ap.rel, flags) != 0) throw_errno(env, errno, syscall_name, file, NULL);
  at_release(&ap);
  release_string(file, file_stack);
  return NULL;
}

static napi_value js_unlink(napi_env env, napi_callback_info info) {
  return unlink_common(env, info, 0, "unlink");
}

static napi_value js_rmdir(napi_env env, napi_callback_info info) {
  return unlink_common(env, info, AT_REMOVEDIR, "rmdir");
}

static napi_value js_symlink(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  char target_stack[PATH_MAX];
  char *target = get_string(env, argv[0], target_stack, sizeof target_stack, "target");
  if (target == NULL) return NULL;
  char file_stack[PATH_MAX];
  char *file = get_string(env, argv[1], file_stack, sizeof file_stack, "file");
  if (file != NULL) {
    at_path ap;
    int rc = at_resolve(file, &ap);
    if (rc == 0) {
      rc = symlinkat(target, ap.dirfd, ap.rel) == 0 ? 0 : -errno;
      at_release(&ap);
    }
    if (rc != 0) throw_errno(env, -rc, "symlink", target, file);
    release_string(file, file_stack);
  }
  release_string(target, target_stack);
  return NULL;
}

static napi_value js_link(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  PATH_ARG(existing, 0, "existing");
  char file_stack[PATH_MAX];
  char *file = get_string(env, argv[1], file_stack, sizeof file_stack, "file");
  if (file != NULL) {
    at_path a, b;
    int rc = at_resolve(existing, &a);
    if (rc == 0) {
      rc = at_resolve(file, &b);
      if (rc == 0) {
        rc = linkat(a.dirfd, a.rel, b.dirfd, b.rel, 0) == 0 ? 0 : -errno;
        at_release(&b);
      }
      at_release(&a);
    }
    if (rc != 0) throw_errno(env, -rc, "link", existing, file);
    release_string(file, file_stack);
  }
  release_string(existing, existing_stack);
  return NULL;
}

/* open(2) with O_CLOEXEC added (as libuv adds it); returns the fd, usable with every fd call of Node's fs. */
static napi_value js_open(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int32_t flags, mode;
  if (!get_int32(env, argv[1], &flags, "flags") || !get_int32(env, argv[2], &mode, "mode")) return NULL;
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  int fd = openat(ap.dirfd, ap.rel, flags | O_CLOEXEC, (mode_t) mode);
  int err = errno;
  at_release(&ap);
  napi_value result = NULL;
  if (fd < 0) {
    throw_errno(env, err, "open", file, NULL);
  } else if (napi_create_int32(env, fd, &result) != napi_ok) {
    close(fd);
    throw_last_napi_error(env);
    result = NULL;
  }
  release_string(file, file_stack);
  return result;
}

/* lchown(2): -1 leaves that id unchanged. */
static napi_value js_lchown(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int64_t uid, gid;
  if (!get_int64(env, argv[1], &uid, "uid") || !get_int64(env, argv[2], &gid, "gid")) return NULL;
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  if (fchownat(ap.dirfd, ap.rel, (uid_t) uid, (gid_t) gid, AT_SYMLINK_NOFOLLOW) != 0) throw_errno(env, errno, "lchown", file, NULL);
  at_release(&ap);
  release_string(file, file_stack);
  return NULL;
}

/* chmod(2) (follows a final symlink, as chmod does; the union never chmods a symlink). */
static napi_value js_chmod(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int32_t mode;
  if (!get_int32(env, argv[1], &mode, "mode")) return NULL;
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  if (fchmodat(ap.dirfd, ap.rel, (mode_t) mode, 0) != 0) throw_errno(env, errno, "chmod", file, NULL);
  at_release(&ap);
  release_string(file, file_stack);
  return NULL;
}

/* truncate(2) itself (not open + ftruncate, which would differ for a file being executed or without write
   permission), through /proc/self/fd for a long path. */
static napi_value js_truncate(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t size;
  if (!get_int64(env, argv[1], &size, "size")) return NULL;
  PATH_ARG(file, 0, "file");
  char proc[32];
  int pfd;
  const char *target = proc_path_for(file, true, proc, &pfd);
  if (target == NULL || truncate(target, (off_t) size) != 0) throw_errno(env, errno, "truncate", file, NULL);
  if (pfd >= 0) close(pfd);
  release_string(file, file_stack);
  return NULL;
}

/* readlink(2), as a UTF-8 string (as Node's readlinkSync returns it). */
static napi_value js_readlink(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  PATH_ARG(file, 0, "file");
  AT_ARG(ap, file);
  char target[PATH_MAX];
  ssize_t n = readlinkat(ap.dirfd, ap.rel, target, sizeof target);
  int err = errno;
  at_release(&ap);
  napi_value result = NULL;
  if (n < 0) {
    throw_errno(env, err, "readlink", file, NULL);
  } else if (napi_create_string_utf8(env, target, (size_t) n, &result) != napi_ok) {
    throw_last_napi_error(env);
    result = NULL;
  }
  release_string(file, file_stack);
  return result;
}

/*
 * Removes `path` and everything below it, of any depth, ignoring a path that does not exist (rm -rf). Only for
 * trees nobody else changes (the union's work dir). It walks down with one dir fd at a time, never building a
 * path: each dir is read, its non-dirs unlinked, and the first subdir entered; an emptied dir is left through
 * "..", which is its parent since nothing moves it meanwhile, and removed from there. The names on the way down
 * are the only state, so depth costs memory, not fds.
 */
static int remove_tree(const char *path) {
  at_path ap;
  int rc = at_resolve(path, &ap);
  if (rc < 0) return rc == -ENOENT ? 0 : rc;
  if (unlinkat(ap.dirfd, ap.rel, 0) == 0 || errno == ENOENT) {
    at_release(&ap);
    return 0;
  }
  if (errno != EISDIR) {
    rc = -errno;
    at_release(&ap);
    return rc;
  }
  int cur = openat(ap.dirfd, ap.rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (cur < 0) {
    rc = errno == ENOENT ? 0 : -errno;
    at_release(&ap);
    return rc;
  }
  char **names = NULL;
  size_t depth = 0, capacity = 0;
  rc = 0;
  for (;;) {
    int listing = dup(cur);
    DIR *stream = listing < 0 ? NULL : fdopendir(listing);
    if (stream == NULL) {
      rc = -errno;
      if (listing >= 0) close(listing);
      break;
    }
    char *subdir = NULL;
    struct dirent *entry;
    while (rc == 0 && (errno = 0, entry = readdir(stream)) != NULL) {
      const char *n = entry->d_name;
      if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
      if (unlinkat(cur, n, 0) == 0 || errno == ENOENT) continue;
      if (errno != EISDIR) {
        rc = -errno;
        break;
      }
      subdir = strdup(n);
      if (subdir == NULL) rc = -ENOMEM;
      break;
    }
    if (rc == 0 && subdir == NULL && errno != 0) rc = -errno;
    closedir(stream);
    if (rc != 0) break;
    if (subdir != NULL) {
      int child = openat(cur, subdir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (child < 0 || (depth == capacity && (capacity = capacity ? capacity * 2 : 64,
                                              names = realloc(names, capacity * sizeof *names)) == NULL)) {
        rc = child < 0 ? -errno : -ENOMEM;
        if (child >= 0) close(child);
        free(subdir);
        break;
      }
      names[depth++] = subdir;
      close(cur);
      cur = child;
      continue;
    }
    if (depth == 0) break; /* the top dir is empty */
    int parent = openat(cur, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (parent < 0) {
      rc = -errno;
      break;
    }
    close(cur);
    cur = parent;
    char *name = names[--depth];
    if (unlinkat(cur, name, AT_REMOVEDIR) != 0 && errno != ENOENT) rc = -errno;
    free(name);
    if (rc != 0) break;
  }
  close(cur);
  while (depth > 0) free(names[--depth]);
  free(names);
  if (rc == 0 && unlinkat(ap.dirfd, ap.rel, AT_REMOVEDIR) != 0 && errno != ENOENT) rc = -errno;
  at_release(&ap);
  return rc;
}

static napi_value js_remove_tree(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  PATH_ARG(file, 0, "file");
  int rc = remove_tree(file);
  if (rc != 0) throw_errno(env, -rc, "rm", file, NULL);
  release_string(file, file_stack);
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------
 * CPU affinity
 *
 * A FUSE request hops from a libfuse thread to the JS thread and back. On a VM, waking a thread that sleeps on
 * another vCPU costs an inter-processor interrupt; keeping the server's threads on one CPU makes each hop a
 * plain context switch. Only the calling thread is pinned; threads it creates afterwards (libfuse's) inherit it.
 * ------------------------------------------------------------------------------------------------------------- */

static napi_value js_pin_thread_to_cpu(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t cpu = 0;
  if (argc < 1 || !get_int32(env, argv[0], &cpu, "cpu")) return NULL;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    throw_errno(env, errno, "sched_setaffinity", NULL, NULL);
    return NULL;
  }
  return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Module
 * ------------------------------------------------------------------------------------------------------------- */

NAPI_MODULE_INIT() {
  napi_property_descriptor functions[] = {
    {"lstatRaw", NULL, lstat_raw, NULL, NULL, NULL, napi_enumerable, NULL},
    {"fstatRaw", NULL, fstat_raw, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"fgetxattr", NULL, js_fgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"fsetxattr", NULL, js_fsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"flistxattr", NULL, js_flistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
    {"renameat2", NULL, js_renameat2, NULL, NULL, NULL, napi_enumerable, NULL},
    {"utimensat", NULL, js_utimensat, NULL, NULL, NULL, napi_enumerable, NULL},
    {"futimens", NULL, js_futimens, NULL, NULL, NULL, napi_enumerable, NULL},
    {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_enumerable, NULL},
    {"copyData", NULL, js_copy_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"nameToHandle", NULL, js_name_to_handle, NULL, NULL, NULL, napi_enumerable, NULL},
    {"openByHandle", NULL, js_open_by_handle, NULL, NULL, NULL, napi_enumerable, NULL},
    {"getFsUuid", NULL, js_get_fs_uuid, NULL, NULL, NULL, napi_enumerable, NULL},
    {"readdirIno", NULL, js_readdir_ino, NULL, NULL, NULL, napi_enumerable, NULL},
    {"pinThreadToCpu", NULL, js_pin_thread_to_cpu, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mkdir", NULL, js_mkdir, NULL, NULL, NULL, napi_enumerable, NULL},
    {"rmdir", NULL, js_rmdir, NULL, NULL, NULL, napi_enumerable, NULL},
    {"unlink", NULL, js_unlink, NULL, NULL, NULL, napi_enumerable, NULL},
    {"symlink", NULL, js_symlink, NULL, NULL, NULL, napi_enumerable, NULL},
    {"link", NULL, js_link, NULL, NULL, NULL, napi_enumerable, NULL},
    {"open", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lchown", NULL, js_lchown, NULL, NULL, NULL, napi_enumerable, NULL},
    {"chmod", NULL, js_chmod, NULL, NULL, NULL, napi_enumerable, NULL},
    {"truncate", NULL, js_truncate, NULL, NULL, NULL, napi_enumerable, NULL},
    {"readlink", NULL, js_readlink, NULL, NULL, NULL, napi_enumerable, NULL},
    {"removeTree", NULL, js_remove_tree, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions) != napi_ok) {
    return NULL;
  }
  return exports;
}
