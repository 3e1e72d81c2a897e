{
  "targets": [
    {
      "target_name": "vsock",
      "sources": ["vsock.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", {
          "sources!": ["vsock.c"]
        }]
      ]
    }
  ]
}
