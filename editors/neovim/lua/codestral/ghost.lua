-- Ghost text drawn with extmarks, for Neovim without vim.lsp.inline_completion (0.7 to 0.11), or
-- when `renderer = 'extmark'`. Asks `textDocument/inlineCompletion` after a pause in typing,
-- shows the first item at the cursor, keeps it while what is typed matches it, and accepts it
-- whole or word by word.
local util = require('codestral.util')
local api = vim.api
local uv = vim.uv or vim.loop

local M = {}
local ns = api.nvim_create_namespace('codestral.ghost')
local state = {} -- bufnr -> { client_id, row, col, text, item, mark }
local timer = uv.new_timer()
local pending -- { client, id } of the request in flight

M.ns = ns

local function cancel()
  timer:stop()
  if pending then
    pcall(util.call, pending.client, 'cancel_request', pending.id)
    pending = nil
  end
end

function M.clear(bufnr)
  api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
end

-- What is left of the suggestion after what was typed since it was asked for, or nil when the
-- buffer has moved away from it.
local function remaining(bufnr, s)
  return s and (util.rest_after_typing(bufnr, s.row, s.col, s.text)) or nil
end

local has_inline = vim.fn.has('nvim-0.10') == 1

-- The line from byte `col` on, as virtual-text chunks in its syntax colours, tabs expanded from
-- screen column `vcol` (0-based): drawn after the ghost text where Neovim has no inline virtual text.
local function rest_of_line(line, row, col, vcol, tabstop)
  local chunks, byte = {}, col
  for ch in line:sub(col + 1):gmatch('[%z\1-\127\194-\244][\128-\191]*') do
    local group = vim.fn.synIDattr(vim.fn.synIDtrans(vim.fn.synID(row + 1, byte + 1, 1)), 'name')
    group = group ~= '' and group or 'Normal'
    local shown = ch == '\t' and string.rep(' ', tabstop - vcol % tabstop) or ch
    vcol = vcol + vim.fn.strdisplaywidth(shown)
    byte = byte + #ch
    local last = chunks[#chunks]
    if last and last[2] == group then
      last[1] = last[1] .. shown
    else
      table.insert(chunks, { shown, group })
    end
  end
  return chunks
end

local function render(bufnr, text)
  M.clear(bufnr)
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local tab = string.rep(' ', vim.bo[bufnr].tabstop)
  local lines = {}
  for _, l in ipairs(vim.split(text, '\n', { plain = true })) do
    table.insert(lines, { { (l:gsub('\t', tab)), 'CodestralGhost' } })
  end
  local line = api.nvim_get_current_line()
  local virt_text, pos = lines[1], 'inline'
  if not has_inline then
    -- Before 0.10 there is no inline virtual text, and 'eol' would draw the ghost after the code
    -- that follows the cursor (`max() nums`): the ghost is drawn over that code from the cursor
    -- on, and the code is drawn again after it, so the line reads as it will once accepted.
    pos = 'overlay'
    if col < #line then
      local vcol = vim.fn.strdisplaywidth(line:sub(1, col)) + vim.fn.strdisplaywidth(virt_text[1][1])
      virt_text = vim.list_extend({ virt_text[1] }, rest_of_line(line, row - 1, col, vcol, vim.bo[bufnr].tabstop))
    end
  end
  local opts = {
    virt_text = virt_text,
    virt_text_pos = pos,
    hl_mode = 'replace', -- 'combine' takes the highlight under it (MatchParen's on `)`)
  }
  if #lines > 1 then
    opts.virt_lines = { unpack(lines, 2) }
  end
  api.nvim_buf_set_extmark(bufnr, ns, row - 1, col, opts)
end

local function request(bufnr)
  local s = state[bufnr]
  local client = s and vim.lsp.get_client_by_id(s.client_id)
  if not client or api.nvim_get_current_buf() ~= bufnr or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  cancel()
  local cursor = api.nvim_win_get_cursor(0)
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 } -- Automatic
  local ok, id
  ok, id = util.call(client, 'request', 'textDocument/inlineCompletion', params, function(err, result)
    if pending and pending.id == id then
      pending = nil
    end
    local now = api.nvim_get_current_buf() == bufnr and api.nvim_win_get_cursor(0)
    if err or not result or not now or now[1] ~= cursor[1] or now[2] ~= cursor[2]
      or api.nvim_buf_get_changedtick(bufnr) ~= tick or not api.nvim_get_mode().mode:match('^i') then
      return
    end
    local item = (result.items or result)[1]
    local text, replace_end = util.insertion(item, bufnr, cursor[1] - 1, cursor[2], client.offset_encoding)
    if not text then
      return
    end
    s.row, s.col, s.text, s.item, s.replace_end = cursor[1] - 1, cursor[2], text, item, replace_end
    render(bufnr, s.text)
  end, bufnr)
  if ok then
    pending = { client = client, id = id }
  end
end

-- `codestral/suggestionUpdated`: the server has a longer suggestion at `position` (0-based line,
-- byte column). Ask again now if the cursor is still there, or typing since went along the
-- suggestion shown from there.
function M.refresh(bufnr, row, col)
  local s = state[bufnr]
  if not s or api.nvim_get_current_buf() ~= bufnr or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  local cursor = api.nvim_win_get_cursor(0)
  local here = cursor[1] - 1 == row and cursor[2] == col
  if here or (s.row == row and s.col == col and remaining(bufnr, s)) then
    timer:stop()
    request(bufnr)
  end
end

-- On entering insert mode, typing or moving: keep the suggestion while it still fits, else ask
-- again after `debounce` ms of quiet.
function M.update(bufnr, debounce)
  local s = state[bufnr]
  local rest = remaining(bufnr, s)
  if rest then
    return render(bufnr, rest)
  end
  cancel()
  M.clear(bufnr)
  s.text, s.item = nil, nil
  timer:start(debounce, 0, vim.schedule_wrap(function()
    request(bufnr)
  end))
end

function M.dismiss(bufnr)
  local s = state[bufnr]
  cancel()
  M.clear(bufnr)
  local shown = s and s.text ~= nil
  if s then
    s.text, s.item = nil, nil
  end
  return shown
end

-- Accepts the suggestion (or its next word): returns false when none is shown. The edit is
-- scheduled so that this can run from an <expr> mapping.
function M.accept(bufnr, word)
  local s = state[bufnr]
  local rest = remaining(bufnr, s)
  if not rest then
    return false
  end
  local part = word and util.next_part(rest, word) or rest
  local item, client = s.item, vim.lsp.get_client_by_id(s.client_id)
  vim.schedule(function()
    M.clear(bufnr)
    if part == rest and s.replace_end and #rest == #s.text then
      -- The item replaces code after the cursor (not only auto-closed brackets it repeats).
      api.nvim_buf_set_text(bufnr, s.row, s.col, s.row, s.replace_end, { '' })
    end
    util.insert(part)
    if part == rest then
      s.text, s.item = nil, nil
      util.exec(client, item.command, bufnr)
    else
      util.partial(client, item.command, s.text:sub(1, #s.text - #rest + #part))
    end
  end)
  return true
end

function M.attach(client, bufnr, debounce)
  state[bufnr] = { client_id = client.id }
  local group = api.nvim_create_augroup('codestral.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.update(bufnr, debounce)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
end

return M
