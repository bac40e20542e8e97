"""stable-diffusion.cpp's native async API (`/sdcpp/v1/*`): routes, schemas, and the native
translation the other surfaces reuse for `<sd_cpp_extra_args>` blocks."""
