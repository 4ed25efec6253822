// Every call to the server goes through `api`: one place for what each request carries, and one
// shape for failures (the server's one-line {"error": ...}).
"use strict";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;  // the HTTP status; 0 when no answer came
  }
}

// path: e.g. "/api/models"; options as for fetch. Resolves to the parsed JSON answer.
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(`no answer from the server (${err.message}); is mnistlab serve still running?`, 0);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError((data && data.error) || `the server answered ${response.status}`, response.status);
  }
  if (data === null) throw new ApiError(`the server's answer to ${path} is not JSON`, response.status);
  return data;
}
