// File helpers: which dropped files a zone accepts, and reading a list of files from DOM events.

const IMAGE_EXTENSIONS = [
  '.jpg', '.jpeg', '.png', '.webp', '.gif', '.apng', '.bmp', '.tif', '.tiff', '.heic', '.heif', '.avif',
]

function extension(name: string): string {
  const dot = name.lastIndexOf('.')
  return dot >= 0 ? name.slice(dot).toLowerCase() : ''
}

export function isImageFile(file: File): boolean {
  if (file.type) return file.type.startsWith('image/')
  return IMAGE_EXTENSIONS.includes(extension(file.name))
}

export function isTextFile(file: File): boolean {
  return file.type === 'text/plain' || extension(file.name) === '.txt'
}

/** Same rules as <input accept>: ".ext", "type/*" and "type/subtype", comma-separated. Empty accepts all. */
export function fileMatchesAccept(file: File, accept: string | undefined): boolean {
  if (!accept) return true
  const tokens = accept.split(',').map((t) => t.trim().toLowerCase()).filter(Boolean)
  const type = file.type.toLowerCase()
  const ext = extension(file.name)
  return tokens.some((token) => {
    if (token.startsWith('.')) return ext === token
    if (token === 'image/*' && !type) return IMAGE_EXTENSIONS.includes(ext)
    if (token.endsWith('/*')) return type.startsWith(token.slice(0, -1))
    return type === token
  })
}

export function filesFromList(list: FileList | null | undefined): File[] {
  return list ? Array.from(list) : []
}

/** Files from a DataTransfer (drop or paste): its `files`, else its file items. */
export function filesFromDataTransfer(dt: DataTransfer | null): File[] {
  if (!dt) return []
  const files = filesFromList(dt.files)
  if (files.length > 0) return files
  const out: File[] = []
  for (const item of Array.from(dt.items ?? [])) {
    if (item.kind === 'file') {
      const f = item.getAsFile()
      if (f) out.push(f)
    }
  }
  return out
}

/** Pasted images often arrive as "image.png" for every paste: give them distinct names. */
let pasteCounter = 0
export function namePasted(file: File): File {
  if (file.name && file.name !== 'image.png') return file
  pasteCounter += 1
  const ext = file.type.split('/')[1] || 'png'
  return new File([file], `pasted-${pasteCounter}.${ext}`, { type: file.type, lastModified: file.lastModified })
}

export function formatBytes(n: number | undefined): string {
  if (n === undefined || n === null) return ''
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`
  return `${(n / 1024 / 1024).toFixed(1)} MB`
}
