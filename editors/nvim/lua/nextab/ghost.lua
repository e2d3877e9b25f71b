-- Ghost text and next-edit previews, drawn with extmarks in one namespace per kind.

local M = {}

M.ns = vim.api.nvim_create_namespace("nextab")
M.edit_ns = vim.api.nvim_create_namespace("nextab-next-edit")
M.inline = vim.fn.has("nvim-0.10") == 1 -- virt_text_pos = "inline"

function M.define_highlights()
  -- `default` keeps a colour scheme's own choice.
  vim.api.nvim_set_hl(0, "NextabGhost", { link = "Comment", default = true })
  vim.api.nvim_set_hl(0, "NextabEditOld", { link = "DiffDelete", default = true })
  vim.api.nvim_set_hl(0, "NextabEditNew", { link = "DiffAdd", default = true })
end

local function virt_lines(lines, hl)
  local out = {}
  for _, line in ipairs(lines) do
    table.insert(out, { { line, hl } })
  end
  return out
end

-- Show `text` as if typed at (row, col): its first line at the cursor, the rest below.
function M.show(bufnr, row, col, text)
  M.clear(bufnr)
  local lines = vim.split(text, "\n", { plain = true })
  local first = table.remove(lines, 1)
  if lines[#lines] == "" then
    table.remove(lines) -- a final line end adds no line to show
  end
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  local opts = { hl_mode = "combine" }
  if first ~= "" then
    if M.inline then
      opts.virt_text = { { first, "NextabGhost" } }
      opts.virt_text_pos = "inline"
    elseif col >= #line then
      -- At the end of the line an overlay starting at the cursor looks like inline text.
      opts.virt_text = { { first, "NextabGhost" } }
      opts.virt_text_pos = "overlay"
    else
      opts.virt_text = { { first, "NextabGhost" } }
      opts.virt_text_pos = "eol"
    end
  end
  if #lines > 0 then
    opts.virt_lines = virt_lines(lines, "NextabGhost")
  end
  if opts.virt_text or opts.virt_lines then
    vim.api.nvim_buf_set_extmark(bufnr, M.ns, row, math.min(col, #line), opts)
  end
end

local function clear(bufnr, ns)
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
end

function M.clear(bufnr)
  clear(bufnr, M.ns)
end

-- The byte column of an LSP position's character in `line`.
local function byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if vim.fn.has("nvim-0.11") == 1 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding ~= "utf-32")
  end
  return ok and col or #line
end

-- A next edit as a preview at its location: the replaced text marked, the lines it makes
-- below them.
function M.show_edit(bufnr, suggestion, encoding)
  M.clear_edit(bufnr)
  local range = suggestion.range
  local first, last = range.start.line, range["end"].line
  local lines = vim.api.nvim_buf_get_lines(bufnr, first, last + 1, false)
  if #lines == 0 then
    return
  end
  local start_col = byte_col(lines[1], range.start.character, encoding)
  local end_col = byte_col(lines[#lines], range["end"].character, encoding)
  local after = lines[1]:sub(1, start_col) .. suggestion.newText .. lines[#lines]:sub(end_col + 1)
  local preview = vim.split(after, "\n", { plain = true })
  if end_col > start_col or last > first then
    vim.api.nvim_buf_set_extmark(bufnr, M.edit_ns, first, start_col, {
      end_row = last,
      end_col = end_col,
      hl_group = "NextabEditOld",
    })
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.edit_ns, last, 0, {
    virt_lines = virt_lines(preview, "NextabEditNew"),
    virt_text = { { "  next edit" .. (suggestion.reason and (": " .. suggestion.reason) or ""), "Comment" } },
    virt_text_pos = "eol",
  })
end

function M.clear_edit(bufnr)
  clear(bufnr, M.edit_ns)
end

return M
