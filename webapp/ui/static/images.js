// Pictures in and out of the page: uploaded files as data URLs (what the native API takes),
// and the API's base64 results as Blobs (shown through blob: URLs, stored in IndexedDB).

export function readImages(files) {
  const pictures = [...files].filter((f) => f.type.startsWith("image/"));
  return Promise.all(pictures.map((file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  })));
}

export function base64Blob(b64, type) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Blob([bytes], { type });
}

export const IMAGE_TYPES = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
