-- codestral-ls for Neovim: starts the server for some filetypes and shows its suggestions as
-- ghost text, with Neovim's own vim.lsp.inline_completion (0.12+) or with extmarks (0.7+).
local util = require('codestral.util')
local api = vim.api

local M = {}

M.defaults = {
  cmd = { 'codestral-ls' },
  init_options = {}, -- a JSON object even when empty: device, dtype, quantize, budgetMs, maxTokens, multiline, secondOpinions, disabledLanguages (the model: --model in cmd)
  filetypes = {
    'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact',
    'go', 'rust', 'java', 'c', 'cpp', 'lua', 'sh',
  },
  renderer = 'auto', -- 'native' (vim.lsp.inline_completion), 'extmark', or 'auto': native where there is one
  debounce = 75, -- ms of quiet before asking (extmark renderer; native waits 200 ms)
  keymaps = { accept = '<Tab>', accept_word = '<M-Right>', accept_line = '<M-C-Right>', dismiss = '<C-]>' }, -- false: no mapping
}
M.config = vim.deepcopy(M.defaults)
M.did_setup = false

-- Whether Neovim's own inline completion is used: 'native', or 'auto' where the plugin can fix its
-- drawing (see patch_native below).
function M.native()
  if M.config.renderer == 'extmark' or not pcall(require, 'vim.lsp.inline_completion') then
    return false
  end
  return M.config.renderer == 'native' or M.native_drawing_fixed()
end

local function ghost()
  return require('codestral.ghost')
end

local function inline()
  return require('vim.lsp.inline_completion')
end

local function client_of(bufnr)
  for _, c in ipairs((vim.lsp.get_clients or vim.lsp.get_active_clients)({ bufnr = bufnr })) do
    if c.name == 'codestral' then
      return c
    end
  end
end

-- Accepts the shown suggestion; `part` true or 'word': its next word only, 'line': up to the end of
-- its first line (with the line break). Returns false when none is shown.
function M.accept(part, bufnr)
  local word = part
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if not M.native() then
    return ghost().accept(bufnr, word)
  end
  if not word then
    return inline().get({ bufnr = bufnr })
  end
  return inline().get({
    bufnr = bufnr,
    on_accept = function(item)
      local text, r = item.insert_text, item.range
      if type(text) ~= 'string' then
        return
      end
      local row, col = unpack(api.nvim_win_get_cursor(0))
      local typed = r and r.start.row == row - 1 and api.nvim_get_current_line():sub(r.start.col + 1, col) or ''
      if text:sub(1, #typed) == typed then
        local part = util.next_part(text:sub(#typed + 1), word)
        util.insert(part)
        local client = vim.lsp.get_client_by_id(item.client_id)
        if #typed + #part >= #text then
          util.exec(client, item.command, bufnr)
        else
          util.partial(client, item.command, typed .. part)
        end
      end
    end,
  })
end

-- Hides the shown suggestion (extmark renderer; the native one hides on <Esc>).
function M.dismiss(bufnr)
  if M.native() then
    return false
  end
  return ghost().dismiss((bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr)
end

-- Calls back with the server's counters (`codestral/stats`).
function M.stats(callback, bufnr)
  local client = client_of(bufnr or api.nvim_get_current_buf()) or client_of(nil)
  if not client then
    return callback(nil, 'codestral-ls is not running')
  end
  util.call(client, 'request', 'codestral/stats', vim.empty_dict(), function(err, result)
    callback(result, err and err.message)
  end)
end

-- What the statusline shows: the server's `codestral/status` and the model-load `$/progress`.
M.state = { kind = nil, message = '', latency = nil, percent = nil }

-- Whether an inline request of codestral's awaits its answer (Neovim's own request table: a
-- cancelled one is no longer 'pending', and Neovim drops the server's reply to it).
local function inline_pending()
  for _, c in ipairs((vim.lsp.get_clients or vim.lsp.get_active_clients)()) do
    if c.name == 'codestral' then
      for _, r in pairs(c.requests or {}) do
        if r.type == 'pending' and r.method == 'textDocument/inlineCompletion' then
          return true
        end
      end
    end
  end
  return false
end

-- A statusline item: `%{v:lua.require'codestral'.statusline()}`. Empty until the server starts.
-- `running` only while a request is in flight: the server says nothing more about a request that
-- was cancelled (typing on, <Esc>), and may say `running` for it after the cancel went out.
function M.statusline()
  local st = M.state
  if st.kind == 'running' and not inline_pending() then
    st = st.before or {}
  end
  if st.kind == 'loading' then
    return ('codestral: loading%s'):format(st.percent and (' %d%%'):format(st.percent) or '')
  elseif st.kind == 'running' then
    return 'codestral: …'
  elseif st.kind == 'answered' then
    return st.latency and ('codestral: %d ms'):format(st.latency) or 'codestral: ready'
  elseif st.kind == 'declined' then
    return 'codestral: ' .. (st.message ~= '' and st.message or 'no suggestion')
  elseif st.kind == 'error' then
    return 'codestral: error: ' .. st.message
  elseif st.kind == 'ready' then
    return 'codestral: ready'
  end
  return ''
end

local function redraw_status()
  pcall(vim.cmd, 'redrawstatus!')
end

-- Loading, ready and errors also go to the message area, on one line without history. Messages
-- are coalesced (the last one within 100 ms is shown): several echoed in a row, with no redraw in
-- between, would scroll and raise a hit-enter prompt that swallows what the user types next. (A
-- one-a-second limit here once dropped the load's 95% report, leaving the message area at 0% while
-- the statusline said 95%.)
local said = { timer = nil, pending = nil }
local function echo(msg)
  local width = vim.o.columns - 12
  if #msg > width then
    msg = msg:sub(1, math.max(width, 10))
  end
  pcall(api.nvim_echo, { { msg } }, false, {})
end

local function say(msg, level)
  if level == vim.log.levels.ERROR then
    return vim.notify('codestral: ' .. msg, level)
  end
  said.pending = 'codestral: ' .. msg
  if said.timer then
    return
  end
  said.timer = vim.defer_fn(function()
    said.timer = nil
    local latest = said.pending
    said.pending = nil
    if latest then
      echo(latest)
    end
  end, 100)
end

-- Asks for the ghost text again now, if the cursor is in insert mode at (row, col) of `bufnr` (0-based,
-- byte; nil: wherever it is), with no keystroke.
local function ask_again(bufnr, row, col)
  if api.nvim_get_current_buf() ~= bufnr or not api.nvim_get_mode().mode:match('^i') or not client_of(bufnr) then
    return
  end
  local crow, ccol = unpack(api.nvim_win_get_cursor(0))
  row, col = row or crow - 1, col or ccol
  if not M.native() then
    return ghost().refresh(bufnr, row, col)
  end
  if crow - 1 ~= row or ccol ~= col then
    return
  end
  -- Neovim has no public "ask again": use the buffer's completor (private API), else the autocmd
  -- its automatic requests hang on (200 ms later).
  local ok, cap = pcall(require, 'vim.lsp._capability')
  local completor = ok and cap.all and cap.all.inline_completion and cap.all.inline_completion.active[bufnr]
  if completor and completor.request then
    completor:request(2)
  else
    api.nvim_exec_autocmds('CursorMovedI', { buffer = bufnr })
  end
end

-- The model is ready: a request made while it loaded was answered with nothing; ask again.
local function loaded()
  vim.schedule(function()
    ask_again(api.nvim_get_current_buf())
  end)
end

local function on_status(_, params)
  if type(params) ~= 'table' then
    return
  end
  local st = M.state
  local was = st.kind
  if params.kind == 'running' and was ~= 'running' then
    st.before = { kind = st.kind, message = st.message, latency = st.latency, percent = st.percent }
  end
  st.kind, st.message = params.kind, params.message or ''
  if type(params.latencyMs) == 'number' then
    st.latency = params.latencyMs
  end
  if params.kind == 'error' then
    say(st.message, vim.log.levels.ERROR)
  elseif params.kind == 'ready' and was == 'loading' then
    say('model loaded')
    loaded()
  elseif params.kind == 'loading' and was ~= 'loading' then
    say('loading the model')
  end
  redraw_status()
end

local function on_progress(err, params, ctx, config)
  local default = vim.lsp.handlers['$/progress']
  if default then
    pcall(default, err, params, ctx, config)
  end
  local value = type(params) == 'table' and params.value
  if type(value) ~= 'table' or params.token ~= 'codestral-ls/model-load' then
    return
  end
  local st = M.state
  if value.kind == 'end' then
    st.kind, st.percent, st.message = 'ready', nil, value.message or ''
    say('model loaded')
    loaded()
  else
    st.kind, st.message = 'loading', value.message or st.message
    st.percent = value.percentage or st.percent
    say(('loading the model%s'):format(st.percent and (' %d%%'):format(st.percent) or ''))
  end
  redraw_status()
end

local function pos_of(bufnr, position, client)
  local line = api.nvim_buf_get_lines(bufnr, position.line, position.line + 1, false)[1]
  return line and util.byte_of(line, position.character, client and client.offset_encoding)
end

-- `codestral/suggestionUpdated`: a longer suggestion is ready where the cursor may still be.
local REGROW_MS = 100
local regrow = { timer = nil, pending = nil, last = 0 }
local function on_suggestion_updated(_, params, ctx)
  local doc, position = type(params) == 'table' and params.textDocument, params and params.position
  local bufnr = api.nvim_get_current_buf()
  if not (doc and position) or vim.uri_from_bufnr(bufnr) ~= doc.uri
    or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  local col = pos_of(bufnr, position, client)
  if not col then
    return
  end
  -- The server may send one per decoded token: ask at most every 100 ms (the last one always).
  regrow.pending = { bufnr, position.line, col }
  if regrow.timer then
    return
  end
  local now = (vim.uv or vim.loop).now()
  regrow.timer = vim.defer_fn(function()
    regrow.timer, regrow.last = nil, (vim.uv or vim.loop).now()
    local p = regrow.pending
    regrow.pending = nil
    ask_again(p[1], p[2], p[3])
  end, math.max(0, REGROW_MS - (now - regrow.last)))
end

-- Native renderer, drawing: Neovim's Completor draws its item again at the cursor on every
-- CursorMovedI until the next answer comes (200 ms and the model's time later). A typed character
-- that matches the ghost is then shown twice (`rreturn`), one that does not leaves the old ghost
-- glued to it (`retxurn`), and the ghost takes the highlight of the code it is drawn into
-- (MatchParen's bold and underline inside `max()`). For codestral's items the plugin replaces the
-- Completor's `show` (vim.lsp.inline_completion's private class): what was typed since the answer
-- is taken off the ghost, a key that leaves it hides it, and the ghost is drawn in ComplHint only.
-- Where that class is missing, `renderer = 'auto'` uses the extmark renderer (ghost.lua).
local anchors = {} -- bufnr -> { row, col }: where the shown item's text starts (0-based, byte)

local function native_completor()
  local ok, cap = pcall(require, 'vim.lsp._capability')
  local class = ok and type(cap.all) == 'table' and cap.all.inline_completion
  return type(class) == 'table' and type(class.show) == 'function' and type(class.hide) == 'function' and class
    or nil
end

-- What is left to show of `text`, asked at `anchor`, with the cursor of the current window in
-- `bufnr` now: nil when the cursor left it or typed something else.
local function rest_after_typing(bufnr, anchor, text)
  if not anchor then
    return nil
  end
  local rest, row, col = util.rest_after_typing(bufnr, anchor.row, anchor.col, text)
  if rest then
    anchor.row, anchor.col = row, col
  end
  return rest
end

local function patch_native()
  local Completor = native_completor()
  if not Completor or Completor._codestral_show then
    return
  end
  local show = Completor.show
  Completor._codestral_show = show
  local ns = api.nvim_create_namespace('nvim.lsp.inline_completion')
  Completor.show = function(self, hint)
    local current = self.current
    local client = current and vim.lsp.get_client_by_id(current.client_id)
    if not (client and client.name == 'codestral') or type(current.insert_text) ~= 'string' or current.range then
      return show(self, hint)
    end
    self:hide()
    local rest = rest_after_typing(self.bufnr, anchors[self.bufnr], current.insert_text)
    if not rest then
      self.current = nil -- <Tab> falls through to a plain <Tab> until the next answer
      return
    end
    current.insert_text = rest
    local tab = string.rep(' ', vim.bo[self.bufnr].tabstop)
    local lines = {}
    for l in vim.gsplit(rest, '\n', { plain = true }) do
      table.insert(lines, { { (l:gsub('\t', tab)), 'ComplHint' } })
    end
    if hint then
      table.insert(lines[#lines], { hint, 'ComplHintMore' })
    end
    local row, col = unpack(api.nvim_win_get_cursor(0))
    api.nvim_buf_set_extmark(self.bufnr, ns, row - 1, col, {
      virt_text = lines[1],
      virt_lines = #lines > 1 and { unpack(lines, 2) } or nil,
      virt_text_pos = 'inline',
      hl_mode = 'replace', -- 'combine' took MatchParen's bold and underline on `)`
    })
  end
end

-- Native renderer, client side of the request: Neovim 0.12-dev builds before neovim/neovim#35965
-- run every attached buffer's inline-completion autocmds on each keystroke, each sending a request
-- for its own buffer with the current window's cursor. Only the current buffer's request goes out.
-- Answers are turned into plain insertions where the item's range only repeats the code after the
-- cursor, so Neovim draws them inline instead of over that code; other replacements are dropped.
local function wrap_requests(client)
  if client._codestral_wrapped then
    return
  end
  client._codestral_wrapped = true
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method ~= 'textDocument/inlineCompletion' or type(params) ~= 'table' then
      return request(self, method, params, handler, bufnr)
    end
    local current = api.nvim_get_current_buf()
    if params.textDocument.uri ~= vim.uri_from_bufnr(current) then
      return false
    end
    local cursor, tick = api.nvim_win_get_cursor(0), api.nvim_buf_get_changedtick(current)
    local inner = handler
    handler = inner and function(err, result, ctx, config)
      if result and api.nvim_get_current_buf() == current then
        local now = api.nvim_win_get_cursor(0)
        if now[1] ~= cursor[1] or now[2] ~= cursor[2] or api.nvim_buf_get_changedtick(current) ~= tick then
          return -- stale: the next request is on its way
        end
        local items = {}
        for _, item in ipairs(result.items or result) do
          local text, replaces = util.insertion(item, current, cursor[1] - 1, cursor[2], self.offset_encoding)
          if text and not replaces then
            table.insert(items, { insertText = text, command = item.command, filterText = item.filterText })
          end
        end
        result = { items = items }
        anchors[current] = { row = cursor[1] - 1, col = cursor[2] }
      end
      return inner(err, result, ctx, config)
    end
    return request(self, method, params, handler, bufnr)
  end
end

-- `codestral/didFocus`: when the cursor rests on another line or in another buffer, tell the server
-- (it warms the prompt there). Debounced; moves within a line send nothing.
local focus = { timer = nil, sent = nil }
local function focus_changed()
  local bufnr = api.nvim_get_current_buf()
  local client = client_of(bufnr)
  local caps = client and client.server_capabilities
  local ext = caps and caps.experimental and caps.experimental.codestral
  if not (type(ext) == 'table' and ext.didFocus) then
    return
  end
  local row = api.nvim_win_get_cursor(0)[1]
  local key = bufnr .. ':' .. row
  if focus.sent == key then
    return
  end
  focus.sent = key
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  util.call(client, 'notify', 'codestral/didFocus', { textDocument = params.textDocument, position = params.position })
end

local function on_cursor()
  local uv = vim.uv or vim.loop
  if not focus.timer then
    focus.timer = uv.new_timer()
  end
  focus.timer:stop()
  focus.timer:start(200, 0, vim.schedule_wrap(focus_changed))
end

-- Ghost highlights with a terminal-colour fallback: without 'termguicolors' (tmux, 256-colour
-- terminals) a gui-only colour leaves the suggestion in the colour of code.
local function highlights()
  vim.cmd('highlight default CodestralGhost ctermfg=244 guifg=#808080')
  if not pcall(require, 'vim.lsp.inline_completion') then
    return
  end
  local cterm = api.nvim_get_hl_by_name('ComplHint', false)
  if cterm.foreground == nil then -- Neovim's ComplHint -> NonText: a gui colour only
    local gui = api.nvim_get_hl_by_name('ComplHint', true)
    api.nvim_set_hl(0, 'ComplHint', { fg = gui.foreground or '#808080', ctermfg = 244 })
  end
end

local function map(bufnr, key, action, desc)
  if key then
    vim.keymap.set('i', key, function()
      return action(bufnr) and '' or key
    end, { buffer = bufnr, expr = true, desc = desc })
  end
end

function M.native_drawing_fixed()
  return native_completor() ~= nil
end

local function on_attach(client, bufnr)
  if M.native() then
    patch_native()
    wrap_requests(client)
    inline().enable(true, { bufnr = bufnr })
  else
    ghost().attach(client, bufnr, M.config.debounce)
  end
  local k = M.config.keymaps or {}
  map(bufnr, k.accept, function(b) return M.accept(false, b) end, 'codestral: accept the suggestion')
  map(bufnr, k.accept_word, function(b) return M.accept('word', b) end, 'codestral: accept the next word')
  map(bufnr, k.accept_line, function(b) return M.accept('line', b) end, 'codestral: accept the next line')
  map(bufnr, k.dismiss, M.dismiss, 'codestral: hide the suggestion')
end

local function lsp_config()
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.experimental = { codestral = { suggestionUpdates = true, status = true } }
  local init_options = M.config.init_options
  if type(init_options) ~= 'table' or next(init_options) == nil then
    init_options = vim.empty_dict() -- {} would go out as a JSON list
  end
  return {
    name = 'codestral',
    cmd = M.config.cmd,
    filetypes = M.config.filetypes,
    init_options = init_options,
    capabilities = capabilities,
    handlers = {
      ['$/progress'] = on_progress,
      ['codestral/status'] = on_status,
      ['codestral/suggestionUpdated'] = on_suggestion_updated,
    },
    on_attach = on_attach,
  }
end

-- Before Neovim 0.11: one client for every buffer of the filetypes (one model in memory).
local function start(bufnr)
  local client = M.client_id and vim.lsp.get_client_by_id(M.client_id)
  if not client or client.is_stopped() then
    local config = lsp_config()
    config.root_dir = vim.fn.getcwd()
    M.client_id = vim.lsp.start_client(config)
  end
  if M.client_id then
    vim.lsp.buf_attach_client(bufnr, M.client_id)
  end
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  if opts and opts.filetypes then -- lists are replaced, not merged
    M.config.filetypes = opts.filetypes
  end
  M.did_setup = true
  local group = api.nvim_create_augroup('codestral', { clear = true })
  highlights()
  api.nvim_create_autocmd('ColorScheme', { group = group, callback = highlights })
  api.nvim_create_autocmd({ 'CursorMoved', 'CursorMovedI', 'BufEnter' }, { group = group, callback = on_cursor })
  -- Leaving insert mode cancels the request in flight: the statusline stops saying `…`.
  api.nvim_create_autocmd('InsertLeave', {
    group = group,
    callback = function()
      vim.defer_fn(redraw_status, 20)
    end,
  })
  api.nvim_create_user_command('CodestralStats', function()
    M.stats(function(result, err)
      print(err or vim.inspect(result))
    end)
  end, { desc = 'codestral-ls counters' })

  if vim.lsp.config and vim.lsp.enable then -- 0.11+
    vim.lsp.config('codestral', lsp_config())
    vim.lsp.enable('codestral')
    return
  end
  api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = M.config.filetypes,
    callback = function(a)
      start(a.buf)
    end,
  })
  for _, b in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(b) and vim.tbl_contains(M.config.filetypes, vim.bo[b].filetype) then
      start(b)
    end
  end
end

return M
