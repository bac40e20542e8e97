// The native async API, as the page uses it. The API key (when the server wants one) lives in
// localStorage and goes out as a Bearer header, never in a URL.

const KEY_STORAGE = "jaxvideo.apiKey";

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail ? `${error}: ${detail}` : error);
    this.status = status;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

async function call(method, path, body) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "the server cannot be reached", String(err.message || err));
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // A proxy's HTML error page, say: the status says enough.
  }
  if (!response.ok) {
    // The native envelope is {"error", "message"}; others nest or flatten theirs.
    const error = data && (data.error?.message || data.error) || `HTTP ${response.status}`;
    throw new ApiError(response.status, String(error), data && (data.message || data.detail));
  }
  return data;
}

export const api = {
  capabilities: () => call("GET", "/sdcpp/v1/capabilities"),
  submit: (mode, body) => call("POST", `/sdcpp/v1/${mode}`, body),
  job: (id) => call("GET", `/sdcpp/v1/jobs/${encodeURIComponent(id)}`),
  cancel: (id) => call("POST", `/sdcpp/v1/jobs/${encodeURIComponent(id)}/cancel`),
};
