-- nextab for Neovim: inline (ghost text) completions and next-edit previews from `nextab serve`.
--
-- Works with Neovim 0.7 (Debian's) and current releases: the LSP client is started with
-- vim.lsp.start where it exists (0.8+) and vim.lsp.start_client otherwise; ghost text is inline
-- virtual text where Neovim has it (0.10+), an overlay at the end of the line, the text after
-- the cursor at end of line and virtual lines below otherwise.

local ghost = require("nextab.ghost")
local uv = vim.uv or vim.loop -- vim.loop is deprecated from 0.10

local M = {}

local defaults = {
  cmd = { "nextab", "serve" },
  settings = {}, -- sent as initializationOptions (see the server's README for the keys)
  filetypes = nil, -- nil: every file buffer; or a list such as { "python", "lua" }
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  debounce_ms = 75,
  keys = { accept = "<Tab>", dismiss = "<C-]>" }, -- false for a key: no mapping
  next_edit = { enabled = true, delay_ms = 600 },
}

M.config = vim.deepcopy(defaults)
M.enabled = true

-- Per buffer: the ghost text shown, the request in flight, the debounce timer, the next edit.
local buffers = {}
local clients_by_root = {} -- for Neovim 0.7, which has no vim.lsp.start to reuse a client

local function now_ms()
  return uv.hrtime() / 1e6
end

local function state(bufnr)
  local s = buffers[bufnr]
  if not s then
    s = {}
    buffers[bufnr] = s
  end
  return s
end

-- Neovim 0.11 calls client methods with `:`; 0.7-0.10 with `.`.
local method_call = vim.fn.has("nvim-0.11") == 1

local function request(client, method, params, handler, bufnr)
  if method_call then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function notify(client, method, params)
  if method_call then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

local function cancel(client, id)
  if method_call then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

function M.status_sync(client, timeout_ms)
  local response
  if method_call then
    response = client:request_sync("nextab/status", vim.NIL, timeout_ms, 0)
  else
    response = client.request_sync("nextab/status", vim.NIL, timeout_ms, 0)
  end
  return response and response.result
end

local function client_for(bufnr)
  local attached
  if vim.lsp.get_clients then
    attached = vim.lsp.get_clients({ bufnr = bufnr, name = "nextab" })
  else
    attached = vim.lsp.buf_get_clients(bufnr)
  end
  for _, client in pairs(attached) do
    if client.name == "nextab" then
      return client
    end
  end
  return nil
end
M.client_for = client_for

-- The buffer's nextab client, else any running one (:checkhealth runs in a buffer of its own).
function M.any_client(bufnr)
  local client = client_for(bufnr or vim.api.nvim_get_current_buf())
  if client then
    return client
  end
  local all = vim.lsp.get_clients and vim.lsp.get_clients({ name = "nextab" }) or vim.lsp.get_active_clients()
  for _, c in ipairs(all) do
    if c.name == "nextab" then
      return c
    end
  end
  return nil
end

local function find_root(bufnr)
  local path = vim.api.nvim_buf_get_name(bufnr)
  local dir = vim.fn.fnamemodify(path, ":p:h")
  for _, marker in ipairs(M.config.root_markers) do
    local found = vim.fn.finddir(marker, dir .. ";")
    if found == "" then
      found = vim.fn.findfile(marker, dir .. ";")
    end
    if found ~= "" then
      return vim.fn.fnamemodify(found, ":p:h:h")
    end
  end
  return dir
end

-- Outcome reports feed the server's local acceptance log (`nextab stats`).
local function report(bufnr, kind, outcome, shown, accepted, latency)
  local client = client_for(bufnr)
  if not client then
    return
  end
  notify(client, "nextab/suggestionOutcome", {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    kind = kind,
    outcome = outcome,
    shownChars = shown,
    acceptedChars = accepted,
    latencyMs = latency,
  })
end

function M.clear(bufnr, outcome)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local s = buffers[bufnr]
  if not s then
    return
  end
  if s.request and s.client then
    cancel(s.client, s.request)
  end
  s.request = nil
  if s.shown then
    report(bufnr, "completion", outcome or "ignored", #s.shown.text, 0, s.shown.latency)
    s.shown = nil
  end
  ghost.clear(bufnr)
  local deferred = s.deferred
  s.deferred = nil
  if deferred and vim.api.nvim_buf_get_changedtick(bufnr) == deferred.tick then
    s.edit = deferred
    ghost.show_edit(bufnr, deferred.suggestion, deferred.encoding)
  end
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2] -- 0-based row, byte column
end

local function item_text(item)
  local text = item.insertText
  if type(text) == "table" then
    text = text.value -- a snippet string: shown as it is
  end
  return text
end

local function on_completion(bufnr, asked, err, result)
  local s = state(bufnr)
  s.request = nil
  if err or not result or not M.enabled then
    return
  end
  -- A newer keystroke made the answer stale: it is for text that no longer exists.
  local row, col = cursor()
  if vim.api.nvim_get_current_buf() ~= bufnr or vim.api.nvim_get_mode().mode:sub(1, 1) ~= "i"
    or vim.api.nvim_buf_get_changedtick(bufnr) ~= asked.tick or row ~= asked.row or col ~= asked.col then
    return
  end
  local items = result.items or result
  local item = items and items[1]
  local text = item and item_text(item)
  if not text or text == "" then
    return
  end
  ghost.show(bufnr, row, col, text)
  s.shown = { text = text, item = item, row = row, col = col, latency = now_ms() - asked.at, tick = asked.tick }
  if s.edit and s.edit.tick == asked.tick then
    -- A next edit already drawn for this text makes way for the ghost text, and comes back.
    s.deferred, s.edit = s.edit, nil
    ghost.clear_edit(bufnr)
  end
end

function M.request(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client or not M.enabled then
    return
  end
  local s = state(bufnr)
  M.clear(bufnr)
  local row, col = cursor()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 } -- automatic: asked for while typing
  local asked = { tick = vim.api.nvim_buf_get_changedtick(bufnr), row = row, col = col, at = now_ms() }
  local ok, id = request(client, "textDocument/inlineCompletion", params, function(err, result)
    on_completion(bufnr, asked, err, result)
  end, bufnr)
  if ok then
    s.request, s.client = id, client
  end
end

-- Run `action(bufnr)` once `delay_ms` passed without another call for the same timer.
local function debounce(bufnr, name, delay_ms, action)
  local s = state(bufnr)
  local timer = s[name]
  if timer then
    timer:stop()
  else
    timer = uv.new_timer()
    s[name] = timer
  end
  timer:start(delay_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(bufnr) and vim.api.nvim_get_current_buf() == bufnr then
      action(bufnr)
    end
  end))
end

local function schedule(bufnr)
  debounce(bufnr, "timer", M.config.debounce_ms, M.request)
end

-- Insert the shown suggestion (all of it, or `part` of it) as the server's range says.
function M.accept(part)
  local bufnr = vim.api.nvim_get_current_buf()
  local s = buffers[bufnr]
  if not s or not s.shown then
    return false
  end
  local shown = s.shown
  local client = client_for(bufnr)
  local text = shown.text
  if part == "word" then
    text = text:match("^%s*[%w_]+") or text:match("^%s*%S") or text
  elseif part == "line" then
    text = text:match("^[^\n]*\n?")
  end
  local whole = text == shown.text
  local range = shown.item.range
  if not whole or not range then
    -- A part, or no range: insert at the cursor and leave the rest of the line alone.
    range = nil
  end
  s.shown = nil
  ghost.clear(bufnr)
  report(bufnr, "completion", whole and "accepted" or "partial", #shown.text, #text, shown.latency)
  local lines = vim.split(text, "\n", { plain = true })
  if range and client then
    vim.lsp.util.apply_text_edits({ { range = range, newText = text } }, bufnr, client.offset_encoding)
  else
    vim.api.nvim_buf_set_text(bufnr, shown.row, shown.col, shown.row, shown.col, lines)
  end
  local end_row = shown.row + #lines - 1
  local end_col = (#lines == 1 and shown.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  if not whole then
    schedule(bufnr) -- the rest, as a new suggestion for where the cursor now is
  end
  return true
end

function M.visible(bufnr)
  local s = buffers[bufnr or vim.api.nvim_get_current_buf()]
  return s ~= nil and s.shown ~= nil
end

function M.shown_text(bufnr)
  local s = buffers[bufnr or vim.api.nvim_get_current_buf()]
  return s and s.shown and s.shown.text or nil
end

-- Next edits ---------------------------------------------------------------------------------

local function server_has_next_edit(client)
  local experimental = (client.server_capabilities or {}).experimental
  return type(experimental) == "table" and type(experimental.nextab) == "table" and experimental.nextab.nextEdit
end

function M.request_next_edit(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client or not M.enabled or not M.config.next_edit.enabled or not server_has_next_edit(client) then
    return
  end
  local s = state(bufnr)
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  local at = now_ms()
  request(client, "nextab/nextEdit", params, function(err, result)
    if err or not result or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    local first = result.suggestions and result.suggestions[1]
    ghost.clear_edit(bufnr)
    s.edit, s.deferred = nil, nil
    if first then
      local edit = { suggestion = first, tick = tick, latency = now_ms() - at, encoding = client.offset_encoding }
      if s.shown and s.shown.tick == tick then
        -- Ghost text is on screen and Tab takes it: the next edit waits until it is turned down
        -- without a change (<C-]>, leaving insert mode, moving away).
        s.deferred = edit
      else
        s.edit = edit
        ghost.show_edit(bufnr, first, edit.encoding)
      end
    end
  end, bufnr)
end

function M.edit_visible(bufnr)
  local s = buffers[bufnr or vim.api.nvim_get_current_buf()]
  return s ~= nil and s.edit ~= nil
end

-- The first press jumps to a next edit elsewhere, the second applies it.
function M.next_edit()
  local bufnr = vim.api.nvim_get_current_buf()
  local s = buffers[bufnr]
  if not s or not s.edit or not M.enabled then
    return false
  end
  local suggestion = s.edit.suggestion
  local start = suggestion.range.start
  local row = cursor()
  if row < start.line or row > suggestion.range["end"].line then
    vim.api.nvim_win_set_cursor(0, { start.line + 1, 0 })
    return true
  end
  local client = client_for(bufnr)
  s.edit = nil
  ghost.clear_edit(bufnr)
  vim.lsp.util.apply_text_edits({ { range = suggestion.range, newText = suggestion.newText } }, bufnr,
    client and client.offset_encoding or "utf-16")
  report(bufnr, "nextEdit", "accepted", #suggestion.newText, #suggestion.newText, nil)
  return true
end

local function drop_edit(bufnr)
  local s = buffers[bufnr]
  if s and s.edit and vim.api.nvim_buf_get_changedtick(bufnr) ~= s.edit.tick then
    report(bufnr, "nextEdit", "ignored", #s.edit.suggestion.newText, 0, s.edit.latency)
    s.edit = nil
    ghost.clear_edit(bufnr)
  end
end

local function schedule_next_edit(bufnr)
  debounce(bufnr, "edit_timer", M.config.next_edit.delay_ms, M.request_next_edit)
end

-- Keys ---------------------------------------------------------------------------------------

local function feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "n", false)
end

local function map_keys()
  local keys = M.config.keys
  if keys.accept then
    vim.keymap.set("i", keys.accept, function()
      if not M.accept() and not M.next_edit() then
        feed(keys.accept)
      end
    end, { desc = "nextab: accept the suggestion (or jump to / apply the next edit)" })
  end
  if keys.dismiss then
    vim.keymap.set("i", keys.dismiss, function()
      if M.visible() then
        M.clear(nil, "dismissed")
      else
        feed(keys.dismiss)
      end
    end, { desc = "nextab: dismiss the suggestion" })
  end
end

-- Server and buffers -------------------------------------------------------------------------

local function wanted(bufnr)
  if vim.bo[bufnr].buftype ~= "" or vim.api.nvim_buf_get_name(bufnr) == "" then
    return false
  end
  local filetypes = M.config.filetypes
  return filetypes == nil or vim.tbl_contains(filetypes, vim.bo[bufnr].filetype)
end

local function client_config(root)
  return {
    name = "nextab",
    cmd = M.config.cmd,
    root_dir = root,
    init_options = M.config.settings,
    -- Changes go out at once: a completion request must not overtake the keystroke before it.
    flags = { debounce_text_changes = 0 },
    on_init = function(client)
      -- The server also answers plain completion requests, for editors without ghost text. Here
      -- a completion plugin (nvim-cmp and the like) would ask the model a second time per
      -- keystroke, cancelling the ghost text's request: suggestions come as ghost text only.
      client.server_capabilities.completionProvider = nil
    end,
  }
end

function M.attach(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  if not wanted(bufnr) or client_for(bufnr) then
    return
  end
  local root = find_root(bufnr)
  if vim.lsp.start then
    vim.lsp.start(client_config(root), { bufnr = bufnr })
  else
    local id = clients_by_root[root]
    if not id or not vim.lsp.get_client_by_id(id) then
      id = vim.lsp.start_client(client_config(root))
      clients_by_root[root] = id
    end
    if id then
      vim.lsp.buf_attach_client(bufnr, id)
    end
  end
end

function M.toggle()
  M.enabled = not M.enabled
  if not M.enabled then
    for bufnr in pairs(buffers) do
      if vim.api.nvim_buf_is_valid(bufnr) then
        M.clear(bufnr)
        ghost.clear_edit(bufnr)
      end
    end
  end
  vim.notify("nextab " .. (M.enabled and "enabled" or "disabled"))
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  ghost.define_highlights()
  map_keys()
  local group = vim.api.nvim_create_augroup("nextab", { clear = true })
  vim.api.nvim_create_autocmd({ "BufReadPost", "BufNewFile", "FileType" }, {
    group = group,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  vim.api.nvim_create_autocmd("TextChangedI", {
    group = group,
    callback = function(args)
      if client_for(args.buf) then
        M.clear(args.buf)
        drop_edit(args.buf)
        schedule(args.buf)
        schedule_next_edit(args.buf)
      end
    end,
  })
  vim.api.nvim_create_autocmd("TextChanged", {
    group = group,
    callback = function(args)
      if client_for(args.buf) then
        drop_edit(args.buf)
        schedule_next_edit(args.buf)
      end
    end,
  })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    callback = function(args)
      local s = buffers[args.buf]
      if s and s.shown then
        local row, col = cursor()
        if row ~= s.shown.row or col ~= s.shown.col then
          M.clear(args.buf)
        end
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    callback = function(args)
      M.clear(args.buf)
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", {
    group = group,
    callback = function(args)
      local s = buffers[args.buf]
      if s then
        for _, timer in ipairs({ s.timer, s.edit_timer }) do
          if timer then
            timer:stop()
            timer:close()
          end
        end
      end
      buffers[args.buf] = nil
    end,
  })
  vim.api.nvim_create_user_command("NextabToggle", M.toggle, { desc = "nextab: toggle suggestions" })
  vim.api.nvim_create_user_command("NextabNextEdit", function()
    if not M.next_edit() then
      M.request_next_edit()
    end
  end, { desc = "nextab: jump to / apply the next edit (asks for one if none is shown)" })
  vim.api.nvim_create_user_command("NextabStatus", function()
    local client = client_for(0)
    if not client then
      vim.notify("nextab: not attached to this buffer")
      return
    end
    request(client, "nextab/status", vim.NIL, function(err, result)
      vim.notify(err and ("nextab: " .. vim.inspect(err)) or ("nextab: " .. vim.inspect(result)))
    end, 0)
  end, { desc = "nextab: server, model and latency" })
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) then
      M.attach(bufnr)
    end
  end
end

return M
