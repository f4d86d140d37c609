/*
 * strata_fetch: one HTTP GET of a registry blob, appended to a file and hashed (SHA-256) as it arrives, on a
 * thread of its own. libcurl moves the bytes; the SHA-256 is the OpenSSL that node itself exports.
 *
 * Why native: a 600 MiB pull spent most of its time in Node's HTTP parser, in a hash update per 64 KiB chunk and in
 * the event loop between them, on the one JS thread (docs/registry.md has the figures). Here each download runs on
 * its own thread, so the downloads, their hashing and their writes use every core.
 *
 * The JS-facing contract lives in lib/native/fetch.ts; this file implements exactly that. Policy stays in JS:
 * this code does one request, follows no redirect and answers no authentication challenge. It returns the status
 * and headers, and the caller decides (credentials never go to a host the caller did not choose).
 *
 * Invariants:
 *  - The digest always covers every byte of the file: the bytes already in it are read and hashed before the
 *    request, which asks only for the rest (Range). A registry that ignores Range sends the whole blob, and the
 *    bytes already held are skipped.
 *  - The file never holds more than `size` bytes, and never bytes past a gap: a body that would go past `size`,
 *    or a 206 that does not start where the file ends, stops the transfer.
 *  - Nothing here touches JS values off the main thread. The thread writes only its own record, and the progress
 *    slot of a Float64Array that the record keeps a reference to (one aligned 8-byte store).
 */
#include "strata_napi.h"


#include <curl/curl.h>
#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Error bodies and header blocks are kept up to this much (the rest is dropped). */
#define MAX_KEPT 65536
/* A read of the held bytes, for hashing, is this big. */
#define READ_CHUNK (1 << 20)

/* Why a transfer stopped early, when it was not the network. Keep in step with FetchStop in lib/native/fetch.ts. */
enum stop_reason { STOP_NONE = 0, STOP_ABORTED, STOP_OVERFLOW, STOP_RANGE, STOP_FILE };

struct buffer {
  char *data;
  size_t length;
};

struct fetch {
  /* In: */
  char *url;
  struct curl_slist *headers;
  char *file;
  char *ca_file; /* NULL: the system's CAs only */
  int64_t size;
  long timeout_seconds;
  double *progress; /* [0] bytes held (written here), [1] non-zero asks to stop (written by JS) */
  napi_ref progress_ref;
  napi_threadsafe_function done;

  /* Out: */
  bool requested;
  long status;
  struct buffer header_block; /* the final response's status line and headers */
  struct buffer error_body;   /* the body of a non-2xx answer */
  int64_t held;
  int64_t transferred;
  char digest[2 * 32 + 1];
  CURLcode curl_code;
  char curl_error[CURL_ERROR_SIZE];
  enum stop_reason stop;
  int file_errno;
  const char *file_syscall;

  /* Transfer state: */
  CURL *curl; /* the body callback reads the answer's status from it */
  int fd;
  EVP_MD_CTX *hash;
  bool body_started;
  bool body_is_blob;
  int64_t skip;
};

static void buffer_append(struct buffer *b, const char *data, size_t length) {
  if (b->length >= MAX_KEPT) return;
  if (length > MAX_KEPT - b->length) length = MAX_KEPT - b->length;
  char *grown = realloc(b->data, b->length + length + 1);
  if (grown == NULL) return;
  b->data = grown;
  memcpy(b->data + b->length, data, length);
  b->length += length;
  b->data[b->length] = '\0';
}

static void publish_progress(struct fetch *f) {
  double held = (double)f->held;
  uint64_t bits;
  memcpy(&bits, &held, sizeof bits);
  __atomic_store_n((uint64_t *)&f->progress[0], bits, __ATOMIC_RELAXED);
}

static bool stop_requested(struct fetch *f) {
  uint64_t bits = __atomic_load_n((uint64_t *)&f->progress[1], __ATOMIC_RELAXED);
  double flag;
  memcpy(&flag, &bits, sizeof flag);
  return flag != 0;
}

static bool file_failed(struct fetch *f, const char *syscall_name) {
  f->stop = STOP_FILE;
  f->file_errno = errno;
  f->file_syscall = syscall_name;
  return false;
}

/* Reads and hashes what the file already holds; drops it when it is longer than the blob can be. */
static bool hash_held(struct fetch *f) {
  char *chunk = malloc(READ_CHUNK);
  if (chunk == NULL) {
    errno = ENOMEM;
    return file_failed(f, "read");
  }
  for (;;) {
    ssize_t n = pread(f->fd, chunk, READ_CHUNK, f->held);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      free(chunk);
      return file_failed(f, "read");
    }
    if (n == 0) break;
    EVP_DigestUpdate(f->hash, chunk, (size_t)n);
    f->held += n;
  }
  free(chunk);
  if (f->held > f->size) {
    if (ftruncate(f->fd, 0) != 0) return file_failed(f, "ftruncate");
    EVP_DigestInit_ex(f->hash, EVP_sha256(), NULL);
    f->held = 0;
  }
  return true;
}

static bool write_all(struct fetch *f, const char *data, size_t length) {
  while (length > 0) {
    ssize_t n = pwrite(f->fd, data, length, f->held);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return file_failed(f, "write");
    EVP_DigestUpdate(f->hash, data, (size_t)n);
    f->held += n;
    data += n;
    length -= (size_t)n;
  }
  return true;
}

/* "Content-Range: bytes START-END/TOTAL" of the final header block: START, or -1. */
static int64_t content_range_start(const struct buffer *headers) {
  const char *p = headers->data;
  while (p != NULL && *p != '\0') {
    if (strncasecmp(p, "content-range:", 14) == 0) {
      p += 14;
      while (*p == ' ' || *p == '\t') p++;
      if (strncasecmp(p, "bytes ", 6) != 0) return -1;
      p += 6;
      char *end = NULL;
      long long start = strtoll(p, &end, 10);
      return end != p && *end == '-' ? (int64_t)start : -1;
    }
    p = strchr(p, '\n');
    if (p != NULL) p++;
  }
  return -1;
}

static size_t on_header(char *data, size_t size, size_t count, void *user) {
  struct fetch *f = user;
  size_t length = size * count;
  /* A new status line starts a new block (after 100 Continue, or an interim answer). */
  if (length >= 5 && memcmp(data, "HTTP/", 5) == 0) f->header_block.length = 0;
  buffer_append(&f->header_block, data, length);
  return length;
}

/*
 * libcurl calls the header callback for every header line, and the body callback only once the headers are
 * complete: the status of the final answer, read at the first body byte, decides where the body goes.
 */
static size_t on_body(char *data, size_t size, size_t count, void *user) {
  struct fetch *f = user;
  size_t length = size * count;
  if (!f->body_started) {
    f->body_started = true;
    curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &f->status);
    if (f->status == 206) {
      if (content_range_start(&f->header_block) != f->held) {
        f->stop = STOP_RANGE;
        return CURL_WRITEFUNC_ERROR;
      }
      f->body_is_blob = true;
    } else if (f->status == 200) {
      f->body_is_blob = true;
      f->skip = f->held;
    }
  }
  f->transferred += (int64_t)length;
  if (!f->body_is_blob) {
    buffer_append(&f->error_body, data, length);
    return length;
  }
  if (f->skip > 0) {
    size_t n = (int64_t)length < f->skip ? length : (size_t)f->skip;
    f->skip -= (int64_t)n;
    data += n;
    length -= n;
    if (length == 0) return size * count;
  }
  if (f->held + (int64_t)length > f->size) {
    f->stop = STOP_OVERFLOW;
    return CURL_WRITEFUNC_ERROR;
  }
  if (!write_all(f, data, length)) return CURL_WRITEFUNC_ERROR;
  publish_progress(f);
  return size * count;
}

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  struct fetch *f = user;
  if (stop_requested(f)) {
    f->stop = STOP_ABORTED;
    return 1;
  }
  return 0;
}

static void run_request(struct fetch *f) {
  CURL *curl = curl_easy_init();
  if (curl == NULL) {
    f->curl_code = CURLE_OUT_OF_MEMORY;
    snprintf(f->curl_error, sizeof f->curl_error, "%s", curl_easy_strerror(CURLE_OUT_OF_MEMORY));
    return;
  }
  char range[64];
  struct curl_slist *headers = f->headers;
  if (f->held > 0) {
    snprintf(range, sizeof range, "Range: bytes=%lld-", (long long)f->held);
    headers = curl_slist_append(headers, range);
    if (headers != NULL) f->headers = headers;
  }
  f->curl = curl;
  curl_easy_setopt(curl, CURLOPT_URL, f->url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, f->headers);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  /* Proxies from the environment are not used, as node:http (the rest of the client) does not use them. */
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_BUFFERSIZE, 512L * 1024L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, f->timeout_seconds);
  /* Less than a byte a second for timeout_seconds: the connection is taken as dead. */
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, f->timeout_seconds);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, f);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, f);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, f->curl_error);
  /* Trusted: the system's CAs (CAPATH, /etc/ssl/certs) and, when given, the caller's extra bundle. */
  if (f->ca_file != NULL) curl_easy_setopt(curl, CURLOPT_CAINFO, f->ca_file);
  f->requested = true;
  f->curl_code = curl_easy_perform(curl);
  if (f->status == 0) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &f->status);
  if (f->curl_code != CURLE_OK && f->curl_error[0] == '\0') {
    snprintf(f->curl_error, sizeof f->curl_error, "%s", curl_easy_strerror(f->curl_code));
  }
  curl_easy_cleanup(curl);
  f->curl = NULL;
}

static void *fetch_main(void *arg) {
  struct fetch *f = arg;
  f->fd = open(f->file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  f->hash = EVP_MD_CTX_new();
  if (f->fd < 0) {
    file_failed(f, "open");
  } else if (f->hash == NULL || EVP_DigestInit_ex(f->hash, EVP_sha256(), NULL) != 1) {
    errno = ENOMEM;
    file_failed(f, "open");
  } else if (hash_held(f)) {
    publish_progress(f);
    if (f->held < f->size && !stop_requested(f)) run_request(f);
    else if (f->held < f->size) f->stop = STOP_ABORTED;
    if (f->held == f->size) {
      unsigned char md[32];
      unsigned int md_length = 0;
      EVP_DigestFinal_ex(f->hash, md, &md_length);
      for (unsigned int i = 0; i < md_length && i < 32; i++) snprintf(f->digest + 2 * i, 3, "%02x", md[i]);
    }
  }
  if (f->fd >= 0 && close(f->fd) != 0 && f->stop == STOP_NONE) file_failed(f, "close");
  EVP_MD_CTX_free(f->hash);
  f->hash = NULL;
  /* deliver() frees f: the handle is read first. */
  napi_threadsafe_function done = f->done;
  napi_call_threadsafe_function(done, f, napi_tsfn_blocking);
  napi_release_threadsafe_function(done, napi_tsfn_release);
  return NULL;
}

static void fetch_free(struct fetch *f) {
  free(f->url);
  free(f->file);
  free(f->ca_file);
  curl_slist_free_all(f->headers);
  free(f->header_block.data);
  free(f->error_body.data);
  free(f);
}

static const char *stop_name(enum stop_reason stop) {
  switch (stop) {
    case STOP_ABORTED: return "aborted";
    case STOP_OVERFLOW: return "overflow";
    case STOP_RANGE: return "range";
    case STOP_FILE: return "file";
    default: return NULL;
  }
}

/* "ENOSPC": the name Node gives the errno too. */
static const char *errno_name(int err) {
  const char *name = strerrorname_np(err);
  return name != NULL ? name : "EIO";
}

static napi_status set_named(napi_env env, napi_value obj, const char *key, napi_value value) {
  return napi_set_named_property(env, obj, key, value);
}

static napi_status set_number(napi_env env, napi_value obj, const char *key, double value) {
  napi_value v;
  napi_status s = napi_create_double(env, value, &v);
  return s == napi_ok ? set_named(env, obj, key, v) : s;
}

static napi_status set_string_or_null(napi_env env, napi_value obj, const char *key, const char *value, size_t length) {
  napi_value v;
  napi_status s = value == NULL ? napi_get_null(env, &v) : napi_create_string_utf8(env, value, length, &v);
  return s == napi_ok ? set_named(env, obj, key, v) : s;
}

/* On the main thread: builds the result object and calls the JS callback with it. */
static void deliver(napi_env env, napi_value callback, void *context, void *data) {
  struct fetch *f = data;
  if (env != NULL) {
    napi_value result, undefined;
    bool ok = napi_create_object(env, &result) == napi_ok &&
      set_number(env, result, "status", f->requested ? (double)f->status : 0) == napi_ok &&
      set_string_or_null(env, result, "headers", f->header_block.data, f->header_block.length) == napi_ok &&
      set_string_or_null(env, result, "errorBody", f->error_body.data, f->error_body.length) == napi_ok &&
      set_number(env, result, "held", (double)f->held) == napi_ok &&
      set_number(env, result, "transferred", (double)f->transferred) == napi_ok &&
      set_string_or_null(env, result, "digest", f->digest[0] ? f->digest : NULL, NAPI_AUTO_LENGTH) == napi_ok &&
      set_number(env, result, "curlCode", (double)f->curl_code) == napi_ok &&
      set_string_or_null(env, result, "curlError", f->curl_code != CURLE_OK ? f->curl_error : NULL, NAPI_AUTO_LENGTH) == napi_ok &&
      set_string_or_null(env, result, "stop", stop_name(f->stop), NAPI_AUTO_LENGTH) == napi_ok &&
      set_string_or_null(env, result, "code", f->stop == STOP_FILE ? errno_name(f->file_errno) : NULL, NAPI_AUTO_LENGTH) == napi_ok &&
      set_string_or_null(env, result, "syscall", f->file_syscall, NAPI_AUTO_LENGTH) == napi_ok &&
      napi_get_undefined(env, &undefined) == napi_ok;
    if (ok) napi_call_function(env, undefined, callback, 1, &result, NULL);
    napi_delete_reference(env, f->progress_ref);
  }
  fetch_free(f);
}

static char *dup_string(napi_env env, napi_value value) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) return NULL;
  char *s = malloc(length + 1);
  if (s != NULL) napi_get_value_string_utf8(env, value, s, length + 1, &length);
  return s;
}

static bool named(napi_env env, napi_value obj, const char *key, napi_value *out) {
  return napi_get_named_property(env, obj, key, out) == napi_ok;
}

/* fetchToFile(request, done): see FetchRequest and FetchResult in lib/native/fetch.ts. */
static napi_value fetch_to_file(napi_env env, napi_callback_info info) {
  GET_ARGS_OR(2, "fetchToFile(request, done) expects 2 arguments");
  struct fetch *f = calloc(1, sizeof *f);
  if (f == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  f->fd = -1;
  napi_value url, headers, file, size, timeout, progress;
  bool is_typedarray = false;
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void *data = NULL;
  napi_value arraybuffer;
  uint32_t header_count = 0;
  int64_t size_value = 0, timeout_value = 0;
  bool ok = named(env, argv[0], "url", &url) && (f->url = dup_string(env, url)) != NULL &&
    named(env, argv[0], "file", &file) && (f->file = dup_string(env, file)) != NULL &&
    named(env, argv[0], "size", &size) && napi_get_value_int64(env, size, &size_value) == napi_ok &&
    named(env, argv[0], "timeoutSeconds", &timeout) && napi_get_value_int64(env, timeout, &timeout_value) == napi_ok &&
    named(env, argv[0], "headers", &headers) && napi_get_array_length(env, headers, &header_count) == napi_ok &&
    named(env, argv[0], "progress", &progress) && napi_is_typedarray(env, progress, &is_typedarray) == napi_ok && is_typedarray &&
    napi_get_typedarray_info(env, progress, &type, &length, &data, &arraybuffer, &offset) == napi_ok &&
    type == napi_float64_array && length >= 2;
  for (uint32_t i = 0; ok && i < header_count; i++) {
    napi_value element;
    char *line = NULL;
    ok = napi_get_element(env, headers, i, &element) == napi_ok && (line = dup_string(env, element)) != NULL;
    if (ok) {
      struct curl_slist *grown = curl_slist_append(f->headers, line);
      ok = grown != NULL;
      if (ok) f->headers = grown;
    }
    free(line);
  }
  napi_value ca_file;
  napi_valuetype ca_type = napi_undefined;
  if (ok && named(env, argv[0], "caFile", &ca_file) && napi_typeof(env, ca_file, &ca_type) == napi_ok && ca_type == napi_string) {
    ok = (f->ca_file = dup_string(env, ca_file)) != NULL;
  }
  if (!ok || size_value < 0 || timeout_value <= 0) {
    fetch_free(f);
    throw_type_error(env,
      "fetchToFile: request needs url, file (strings), size (>= 0), timeoutSeconds (> 0), headers (string[]) and progress (Float64Array(2))");
    return NULL;
  }
  f->size = size_value;
  f->timeout_seconds = (long)timeout_value;
  f->progress = data;
  napi_value name;
  CHECK(napi_create_string_utf8(env, "strata_fetch", NAPI_AUTO_LENGTH, &name));
  if (napi_create_reference(env, progress, 1, &f->progress_ref) != napi_ok ||
      napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, deliver, &f->done) != napi_ok) {
    if (f->progress_ref != NULL) napi_delete_reference(env, f->progress_ref);
    fetch_free(f);
    napi_throw_error(env, NULL, "fetchToFile: cannot set up the completion callback");
    return NULL;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int rc = pthread_create(&thread, &attr, fetch_main, f);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    napi_release_threadsafe_function(f->done, napi_tsfn_abort);
    napi_delete_reference(env, f->progress_ref);
    fetch_free(f);
    napi_throw_error(env, rc == EAGAIN ? "EAGAIN" : NULL, "fetchToFile: cannot start a download thread");
    return NULL;
  }
  return NULL;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_code = CURLE_OK;

static void init_curl(void) {
  curl_init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static napi_value init(napi_env env, napi_value exports) {
  pthread_once(&curl_once, init_curl);
  if (curl_init_code != CURLE_OK) {
    napi_throw_error(env, NULL, "strata_fetch: curl_global_init failed");
    return NULL;
  }
  napi_value fn;
  CHECK(napi_create_function(env, "fetchToFile", NAPI_AUTO_LENGTH, fetch_to_file, NULL, &fn));
  CHECK(napi_set_named_property(env, exports, "fetchToFile", fn));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
