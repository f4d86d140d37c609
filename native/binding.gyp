{
  "targets": [
    {
      "target_name": "strata_sys",
      "sources": [
        "strata_sys.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter"
      ],
      "defines": [
        "_GNU_SOURCE",
        "NAPI_VERSION=8"
      ]
    },
    {
      "target_name": "strata_fuse",
      "sources": [
        "strata_fuse.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-pthread"
      ],
      "ldflags": [
        "-pthread"
      ],
      "defines": [
        "_GNU_SOURCE",
        "NAPI_VERSION=8"
      ]
    },
    {
      "target_name": "strata_fetch",
      "sources": [
        "strata_fetch.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-pthread"
      ],
      "ldflags": [
        "-pthread"
      ],
      "libraries": [
        "-lcurl"
      ],
      "defines": [
        "_GNU_SOURCE",
        "NAPI_VERSION=8"
      ]
    }
  ]
}
