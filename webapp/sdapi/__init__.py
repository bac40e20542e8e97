"""The AUTOMATIC1111-compatible API (`/sdapi/v1/*`): routes, schemas, A1111 field translation
(hires fix, model titles, batch_size x n_iter) and its model switch."""
