/*
 * What every Strata addon needs from N-API: the feature macros, and the checks that turn a failed napi_* call or
 * a short argument list into a pending JS exception and a NULL return. Include it first.
 */
#ifndef STRATA_NAPI_H
#define STRATA_NAPI_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif

#include <node_api.h>
#include <stdbool.h>

/* Throws what the last napi_* call left, unless an exception is pending already (then that one stands). */
static inline void throw_last_napi_error(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  napi_throw_error(env, "ERR_NAPI", info && info->error_message ? info->error_message : "N-API call failed");
}

static inline void throw_type_error(napi_env env, const char *message) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
}

/* Returns from the calling N-API function (with NULL) when a napi_* call failed; an exception is then pending. */
#define CHECK(call)                 \
  do {                              \
    if ((call) != napi_ok) {        \
      throw_last_napi_error(env);   \
      return NULL;                  \
    }                               \
  } while (0)

/* Declares argc/argv with the call's first n arguments; fewer than n throws `usage` as a TypeError. */
#define GET_ARGS_OR(n, usage)                                           \
  size_t argc = (n);                                                    \
  napi_value argv[(n)];                                                 \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));          \
  if (argc < (n)) {                                                     \
    throw_type_error(env, (usage));                                     \
    return NULL;                                                        \
  }

#define GET_ARGS(n) GET_ARGS_OR(n, "expected " #n " arguments")

#endif
